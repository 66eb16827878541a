"""Benchmark v2's declarations and guards (bench/benchmark_v2.py, bench/v2_tasks.py), without training."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.bench.test_ranking_quality import _module

T = _module("v2_tasks")
B = _module("benchmark_v2")


def test_the_declared_design_meets_the_brief():
    doc = B.prereg_document()
    families = doc["candidates"]
    assert set(families) == {"unet3d", "nnunet"}
    for members in families.values():
        assert sum(r["make"] != "random" for r in members) >= 5  # pretrained variants per family
        assert any(r["make"] == "random" for r in members)
    assert all(r["architecture"] == "nnunet" for r in families["nnunet"])
    tasks = {n: T.TASKS[n] for n in doc["evaluation_tasks"]}
    assert all(2 <= s.n_train <= 3 for s in T.TASKS.values())  # few-shot everywhere
    small = [n for n, s in T.TASKS.items() if "ventricles" in s.kind or "deep_csf" in s.kind]
    assert T.TUNING_TASK in small and len([n for n in small if n in tasks]) >= 2
    real = [s for s in tasks.values() if s.kind.startswith("real_")]
    assert real and all(s.spacing_mm <= 2.0 for s in real)
    assert not set(doc["proxies"]["seeds"]) & set(doc["ground_truth"]["seeds"])
    assert len(doc["proxies"]["seeds"]) >= 3
    roots = [s.root for s in T.TASKS.values()]
    assert len(set(roots)) == len(roots)


def test_the_committed_preregistration_matches_the_declarations():
    """What runs is what was registered: the committed file equals the declarations but for its timestamp."""
    committed = B.rq.load(B.PREREGISTRATION)
    declared = B.prereg_document()
    committed.pop("created"), declared.pop("created")
    assert json.loads(json.dumps(declared, default=float)) == committed


@pytest.mark.parametrize("name", ["tuning", "t2_ventricles"])
def test_synthetic_small_structures_are_small_and_present(name):
    spec = T.TASKS[name]
    image, label, affine, _ident = T.make_case(spec, np.random.default_rng(np.random.SeedSequence(7).spawn(1)[0]))
    assert image.shape == label.shape and affine[0, 0] == spec.spacing_mm
    small = label == max(T.LABELS[spec.kind].values())
    assert 0.0005 < small.mean() < 0.02


@pytest.mark.skipif(not (T.ITK_DATA / T.ITK_T1).is_file(), reason="apt-get install insighttoolkit5-examples")
def test_the_real_head_tissue_rule_orders_classes_by_t1_intensity_and_warps_at_2mm():
    image, tissue, _ = T.real_head()
    means = [image[tissue == k].mean() for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2]  # T1: CSF darker than grey, grey darker than white
    spec = T.TASKS["real_deep_csf"]
    moved, label, affine, _ = T.make_case(spec, np.random.default_rng(3))
    assert affine[0, 0] == 2.0 and min(moved.shape) > 80  # a realistic head at 2 mm, not a thumbnail
    assert 0.001 < label.mean() < 0.02


def test_an_evaluation_tasks_ground_truth_needs_the_committed_preregistration(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "bench").mkdir(parents=True)
    mine = tmp_path / "preregistration_v2.json"
    mine.write_text('{"a": 1}\n')
    monkeypatch.setattr(B, "PREREGISTRATION", mine)

    def git(*args):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    B.require_prereg(B.T.TUNING_TASK, repo)  # the tuning task never needs it
    with pytest.raises(SystemExit, match="commit"):
        B.require_prereg("ct_fewshot", repo)
    (repo / B.PREREG_REL).write_text('{"a": 1}\n')
    with pytest.raises(SystemExit):  # written but not committed
        B.require_prereg("ct_fewshot", repo)
    git("add", B.PREREG_REL)
    git("commit", "-qm", "prereg")
    B.require_prereg("ct_fewshot", repo)
    mine.write_text('{"a": 2}\n')  # the run's copy differs from the committed one
    with pytest.raises(SystemExit):
        B.require_prereg("ct_fewshot", repo)


def test_a_control_rebuilt_as_other_bits_has_its_proxy_entries_rerun_and_recorded(tmp_path, monkeypatch):
    """Only a control may be rebased, only its entries are rerun, and the file says from which hash and on
    which machine."""
    from types import SimpleNamespace

    folder = tmp_path / "proxies" / "tuning"
    folder.mkdir(parents=True)
    old = {"u8_random": "r", "u8_control_81": "old"}
    B.rq.dump(
        folder / "normonly_lr0.1_seed101.json",
        {
            "method": "normonly",
            "lr": 0.1,
            "seed": 101,
            "weights_sha256": old,
            "entries": {"u8_random": {"score": 0.5}, "u8_control_81": {"score": 0.4}},
        },
    )
    B.rq.dump(
        folder / "shortft_seed101.json",
        {"method": "shortft", "seed": 101, "weights_sha256": old, "entries": {"u8_random": {}}},
    )
    zoo = SimpleNamespace(
        manifests={"u8_random": {"weights_sha256": "r"}, "u8_control_81": {"weights_sha256": "new"}},
        candidates=[SimpleNamespace(name="u8_random"), SimpleNamespace(name="u8_control_81")],
    )
    calls = []
    monkeypatch.setattr(B, "RESULTS", tmp_path)
    monkeypatch.setattr(B, "MACHINE", {"cpu": "test CPU", "precision": "fp32", "capability": "AVX2"})
    monkeypatch.setattr(B, "_task", lambda name, cache: ("spec", zoo, "data", None, 0.0))
    monkeypatch.setattr(
        B, "_normonly_entry", lambda c, d, s, lr, seed: calls.append((c.name, lr, seed)) or {"score": 0.3}
    )
    B.rebase_controls(tmp_path)
    assert calls == [("u8_control_81", 0.1, 101)]
    doc = B.rq.load(folder / "normonly_lr0.1_seed101.json")
    assert doc["entries"] == {"u8_random": {"score": 0.5}, "u8_control_81": {"score": 0.3}}
    assert doc["weights_sha256"]["u8_control_81"] == "new"
    assert doc["rebased"][0]["was_sha256"] == "old" and doc["rebased"][0]["rerun"]
    assert doc["rebased"][0]["machine"]["cpu"] == "test CPU"  # its seconds compare only within that class
    short = B.rq.load(folder / "shortft_seed101.json")  # controls are not in short fine-tuning: hash only
    assert short["weights_sha256"]["u8_control_81"] == "new" and not short["rebased"][0]["rerun"]

    zoo.manifests["u8_random"]["weights_sha256"] = "retrained"  # a trained candidate's bits are not a draw
    with pytest.raises(SystemExit, match="u8_random"):
        B.rebase_controls(tmp_path)


def test_a_ground_truth_run_is_claimed_by_one_process_and_freed_when_its_holder_dies(tmp_path):
    lock = tmp_path / "claims" / "u8_random" / "seed3.lock"
    with B.claimed(lock) as first, B.claimed(lock) as second:
        assert first and not second  # the process that meets a run being made skips it
    with B.claimed(lock) as again:
        assert again
    code = f"import fcntl, time; f = open({str(lock)!r}, 'w'); fcntl.flock(f, fcntl.LOCK_EX); print(1, flush=True)"
    code += "; time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "1"
        with B.claimed(lock) as mine:
            assert not mine
    finally:
        holder.kill()
        holder.wait()
    with B.claimed(lock) as mine:  # a killed holder leaves no claim behind
        assert mine


def test_a_second_proxy_process_walks_the_files_from_the_end_and_skips_what_is_landed_or_claimed(tmp_path, monkeypatch):
    from types import SimpleNamespace

    zoo = SimpleNamespace(
        keys={"u8_random": "k"},
        manifests={"u8_random": {"weights_sha256": "r"}},
        candidates=[SimpleNamespace(name="u8_random")],
    )
    made = []
    monkeypatch.setattr(B, "RESULTS", tmp_path)
    monkeypatch.setattr(B, "PROXY_SEEDS", (101, 102))
    monkeypatch.setattr(B, "NORM_LRS", (0.03,))
    task = (SimpleNamespace(patch=8), zoo, SimpleNamespace(val="val"), None, 0.5)  # spec, zoo, data, test, load
    monkeypatch.setattr(B, "_task", lambda name, cache: task)
    monkeypatch.setattr(B, "_logme_entry", lambda c, d, s, seed: made.append(("logme", seed)) or {"score": 1.0})
    monkeypatch.setattr(B, "_normonly_entry", lambda c, d, s, lr, seed: made.append(("norm", seed)) or {"score": 0.5})
    monkeypatch.setattr(B.rq, "finetune", lambda c, d, v, seed, b, cfg: made.append(("ft", seed)) or {"dice": 0.9})
    folder = tmp_path / "proxies" / "tuning"
    B.rq.dump(folder / "shortft_seed102.json", {"zoo_keys": zoo.keys, "entries": {}})  # landed
    cache = tmp_path / "cache"
    with B.claimed(cache / "v2-claims" / "tuning" / "proxies" / "normonly_lr0.03_seed102.json.lock"):
        B.run_proxies(["tuning"], cache, reverse=True)  # the other process is making normonly seed 102
    assert made == [("logme", 102), ("ft", 101), ("norm", 101), ("logme", 101)]
    doc = B.rq.load(folder / "normonly_lr0.03_seed101.json")
    assert doc["method"] == "normonly" and doc["task"] == "tuning" and doc["load_cpu_seconds"] == 0.5
    assert doc["entries"] == {"u8_random": {"score": 0.5}} and doc["zoo_keys"] == zoo.keys
    assert not (folder / "normonly_lr0.03_seed102.json").exists()


def test_the_validation_cost_table_puts_each_policy_beside_fine_tuning_and_says_whether_scores_agree():
    V = _module("v2_validation_cost")
    row = {
        "candidate": "u8_random",
        "every": {"cpu_seconds": 35.0, "score": 0.8, "validations": 5},
        "scored": {"cpu_seconds": 10.0, "score": 0.8, "validations": 1},
        "finetune_cpu": 125.0,
    }
    other = {**row, "candidate": "nnunet_random", "scored": {"cpu_seconds": 5.0, "score": 0.7, "validations": 1}}
    text = V.table({"task": "real_brain", "steps": 50, "val_every": 10, "rows": [row, other]})
    first, second = text.splitlines()[2:]
    assert first.split() == ["u8_random", "35.0", "5", "10.0", "1", "125.0", "0.280", "0.080", "yes"]
    assert second.endswith("no (0.8000 vs 0.7000)")
