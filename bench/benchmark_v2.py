"""Ranking-quality benchmark v2: within-architecture choice, few-shot and small-structure tasks, a real head.

v1 (``bench/ranking_quality.py``) found its ground truth to be mostly an order of architectures, with no
small structure in its tuning task and every subject a warp of one template. v2 declares, before any of its
evaluation ground truth exists (``bench/preregistration_v2.json``, written by ``--prereg`` from the
declarations below and committed first):

- **two architecture families with seven pretrained variants each** beside a random initialisation:
  ``unet3d`` w8 (BatchNorm) and nnU-Net's PlainConvUNet (InstanceNorm), made by supervised training (two
  lengths, two seeds), on unrelated shapes, by Models Genesis on MR-like and CT-like volumes, and (unet3d
  only, nnU-Net's checkpoint cannot be damaged by the zoo) by damaging a supervised network; plus three
  random-init *controls* per family, which the proxies score (the noise floor) and the ground truth does not;
- **few-shot tasks** (2-3 training cases) at a budget a user would fine-tune for (800 steps, cosine);
- **small structures** in the tuning task and in two evaluation tasks;
- **real images**: two evaluation tasks from the ITK example T1 head a Debian package ships, at 2 mm with
  realistic volume sizes (``v2_tasks.py``);
- **proxy noise counted**: every proxy at three seeds (101-103), none a ground-truth seed (1-5).

    python bench/benchmark_v2.py --prereg                # writes bench/preregistration_v2.json: commit it
    python bench/benchmark_v2.py --data                  # every source and task, once (cached)
    python bench/benchmark_v2.py --zoo --family unet3d   # and --family nnunet (two processes)
    python bench/benchmark_v2.py --ground-truth          # every task, resumable, one JSON per run
    python bench/benchmark_v2.py --proxies               # every proxy × proxy seed × task, resumable
    python bench/benchmark_v2.py --status                # what has landed
    python bench/benchmark_v2.py --rebase-controls       # controls rebuilt as other bits: rerun their entries

``bench/run_v2.sh`` runs it all detached, from a snapshot of the commit, writing under bench/results/v2/.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ranking_quality as rq  # noqa: E402
import v2_tasks as T  # noqa: E402
from v2_strategies import is_control  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "v2"
PREREGISTRATION = ROOT / "bench" / "preregistration_v2.json"
PREREG_REL = "bench/preregistration_v2.json"

# Test Dice read at 100 and 400 steps of the 800-step cosine run (the order against budget) and at 800 (the
# ground truth); few points, because at 2 mm every reading is a sliding-window pass over six whole heads.
GT = rq.GTConfig(budgets=(100, 400, 800), seeds=(1, 2, 3, 4, 5))
PROXY_SEEDS = (101, 102, 103)
NORM_LRS = (0.03, 0.1)
NORM_MAX = 100  # norm-only runs go to 100 steps; 20 and 50 are read off them (constant lr: prefixes)
NORM_STEPS = (20, 50, 100)
NORM_SCORES = ("dice", "soft_dice")  # both read off one run configured with soft_dice (its curve holds both)
SHORT_FT = (25, 50, 100)  # short full fine-tuning: cosine over 100 steps, validation Dice at each point
LOGME_BATCHES = 8
# The commit whose snapshot computes the results (run_v2.sh sets it): engine changes between sessions, such as
# how a head is re-initialised, must not mix within a task unnoticed.
CODE = os.environ.get("BNRANK_BENCH_COMMIT")
MACHINE: dict[str, Any] | None = None  # set in main(): machine()
COST_CAP = 0.10  # the default strategy may cost at most this share of fine-tuning every candidate


def machine() -> dict[str, Any]:
    """The CPU and the precision "auto" resolves to on it, recorded in every result: CPU seconds compare only
    within one class (bench/report_v2.py), and bf16 and fp32 runs are told apart."""
    import torch

    from bnrank.engine.configs.training import TrainConfig
    from bnrank.engine.training.precision import use_bf16

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
    bf16 = use_bf16(TrainConfig(precision=GT.precision))
    return {"cpu": cpu, "precision": "bf16" if bf16 else "fp32", "capability": torch.backends.cpu.get_cpu_capability()}


# ------------------------------------------------------------------------------------------------ zoo


def recipes() -> dict[str, list]:
    """The candidates per family (v1's recipes reused where identical, so their cache is shared) and the
    random-init controls (proxies only)."""
    import zoo as Z

    v1 = {r.name: r for r in Z.ALL_RECIPES}
    u8, nn = Z.U8, Z.NNUNET_PLAIN_ARCH

    def sup(name, arch, build, source, steps, seed, what):
        return Z.Recipe(name, arch, build, make="supervised", source=source, steps=steps, seed=seed, what=what)

    def gen(name, arch, build, source, seed, what):
        return Z.Recipe(
            name, arch, build, make="genesis", source=source, steps=Z.GENESIS_STEPS, lr=1e-3, seed=seed, what=what
        )

    unet3d = [
        v1["u8_random"],
        v1["u8_brain_t1"],
        sup("u8_brain_t1_long", "unet3d", u8, "source_t1", 1200, 62, "unet3d w8, supervised T1 tissues, 1200 steps"),
        sup("u8_brain_t1_b", "unet3d", u8, "source_t1", 300, 63, "unet3d w8, supervised T1 tissues, another seed"),
        sup("u8_shapes", "unet3d", u8, "source_shapes", 300, 64, "unet3d w8, supervised on shapes (unrelated)"),
        gen("u8_genesis_mr", "unet3d", u8, "unlabeled_mr", 65, "unet3d w8, Models Genesis on MR-like volumes"),
        gen("u8_genesis_ct", "unet3d", u8, "unlabeled_ct", 66, "unet3d w8, Models Genesis on CT-like volumes"),
        Z.Recipe(
            "u8_brain_t1_damaged",
            "unet3d",
            u8,
            make="damaged",
            parent="u8_brain_t1",
            share=0.5,
            seed=67,
            what="u8_brain_t1 with 50 % of every conv's filters replaced by noise (damaged)",
        ),
    ]
    nnunet = [
        v1["nnunet_random"],
        v1["nnunet_brain_t1"],
        sup("nnunet_brain_t1_long", "nnunet", nn, "source_t1", 1200, 72, "nnU-Net Plain, supervised T1, 1200 steps"),
        sup("nnunet_brain_t1_b", "nnunet", nn, "source_t1", 300, 73, "nnU-Net Plain, supervised T1, another seed"),
        sup("nnunet_shapes", "nnunet", nn, "source_shapes", 300, 74, "nnU-Net Plain, supervised on shapes"),
        gen("nnunet_genesis_mr", "nnunet", nn, "unlabeled_mr", 75, "nnU-Net Plain, Models Genesis on MR-like"),
        v1["nnunet_genesis_ct"],
    ]
    controls = [
        Z.Recipe(f"u8_control_{s}", "unet3d", u8, seed=s, what=f"unet3d w8 random init (control, seed {s})")
        for s in (81, 82, 83)
    ] + [
        Z.Recipe(f"nnunet_control_{s}", "nnunet", nn, seed=s, what=f"nnU-Net Plain random init (control, seed {s})")
        for s in (91, 92, 93)
    ]
    return {"unet3d": unet3d, "nnunet": nnunet, "controls": controls}


def family_of(name: str) -> str:
    return "nnunet" if name.startswith("nnunet") else "unet3d"


def build(cache: Path, families: tuple[str, ...] = ("unet3d", "nnunet", "controls")):
    """Build (or reuse) the zoo of the named families; check no task subject made any candidate."""
    import zoo as Z

    rs = recipes()
    recipe = [r for f in families for r in rs[f]]
    keys = Z.recipe_keys(recipe)
    # Every candidate and control is committed once built (RESULTS/zoo/<name>-<key>/, ~65 MB in all): training
    # on another CPU model gives other bits, and so, for some seeds, does a random initialisation (u8_control_81
    # did); a ground truth that takes several sessions on changing machines must compare the same weights.
    for r in recipe:
        committed, cached = RESULTS / "zoo" / f"{r.name}-{keys[r.name]}", cache / "zoo" / f"{r.name}-{keys[r.name]}"
        if (committed / Z.weights_name(r)).is_file() and not (cached / "manifest.json").is_file():
            shutil.copytree(committed, cached, dirs_exist_ok=True)
            rq.log(f"zoo: {r.name} taken from the committed zoo")
    zoo = Z.build_zoo(cache, recipe, log=rq.log)
    for r in recipe:
        committed, cached = RESULTS / "zoo" / f"{r.name}-{keys[r.name]}", cache / "zoo" / f"{r.name}-{keys[r.name]}"
        if not (committed / Z.weights_name(r)).is_file():
            shutil.copytree(cached, committed, dirs_exist_ok=True)
    for name, manifest in zoo.manifests.items():  # what was built, with its hash: committed once, when built
        path = RESULTS / "zoo" / f"{name}.json"
        if not path.is_file() or rq.load(path).get("weights_sha256") != manifest.get("weights_sha256"):
            rq.dump(path, {**manifest, "machine": MACHINE or machine()})
    folders = [(name, T.write_task(spec, cache)) for name, spec in T.TASKS.items()]
    Z.check_disjoint(zoo, folders)
    return zoo


# ------------------------------------------------------------------------------------------------ protocol


def prereg_document() -> dict[str, Any]:
    """Everything fixed before any v2 evaluation ground truth: tasks, zoo, protocol, proxies, baselines,
    strategies, the decision rule and the targets."""
    rs = recipes()
    return {
        "what": "benchmark v2, declared before any v2 evaluation ground truth exists",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tasks": {n: asdict(s) for n, s in T.TASKS.items()},
        "tuning_task": T.TUNING_TASK,
        "evaluation_tasks": list(T.EVALUATION_TASKS),
        "real_images": {
            "package": "insighttoolkit5-examples (Debian)",
            "files": [str(T.ITK_DATA / T.ITK_T1), str(T.ITK_DATA / T.ITK_MASK)],
            "labels": "inside the shipped brain mask, 3-class 1-D k-means of T1 intensity; deep CSF = CSF-like "
            f"≥ {T.DEEP_MM} mm inside the brain; one real subject under random affine + elastic warps",
        },
        "candidates": {f: [asdict(r) for r in rs[f]] for f in ("unet3d", "nnunet")},
        "controls": [asdict(r) for r in rs["controls"]],
        "ground_truth": {
            **asdict(GT),
            "patch": {n: s.patch for n, s in T.TASKS.items()},
            "score": "test Dice per case (mean over foreground classes present), mean over cases; GT = mean over "
            "seeds at the last budget",
        },
        "proxies": {
            "seeds": list(PROXY_SEEDS),
            "norm_only": {
                "lrs": list(NORM_LRS),
                "steps": list(NORM_STEPS),
                "scores": list(NORM_SCORES),
                "validation": "whole",
                "val_every": rq.VAL_EVERY,
            },
            "short_finetune": {
                "steps": list(SHORT_FT),
                "schedule": f"cosine over {SHORT_FT[-1]} steps",
                "score": "validation Dice",
            },
            "logme": {"batches": LOGME_BATCHES},
        },
        "baselines": [
            "architecture prior: the tuning task's GT mean per family (data-free)",
            "parameter count",
            "random pick (expected value)",
            f"LogME b{LOGME_BATCHES}",
            "norm-only alone: the best norm-only setting on the tuning task by the decision rule's own measures",
            "short full fine-tuning at equal cost: the SHORT_FT point whose cost is closest to the chosen strategy's",
        ],
        "strategies": {
            "norm_only": "one norm-only setting (lr × steps × score), score = mean over proxy seeds",
            "gain_over_controls": "norm-only score minus the mean of its family's controls (3 controls × proxy "
            "seeds); a candidate whose gain is within 2 s.d. of the controls' scores is flagged as inside the "
            "noise floor",
            "cascade": "gain_over_controls, then a short fine-tuning race among the top 2 of every family by gain "
            "(successive halving over the SHORT_FT points: 4 → 2 → 1 by validation Dice); the rest ordered by gain",
            "short_finetune": "every candidate fine-tuned SHORT_FT[k] steps, ordered by validation Dice",
            "prior_norm_only": "families by the architecture prior, candidates within a family by a norm-only "
            "setting (v1's best-regret cheap order, post hoc there: tested here)",
            "prior_race": "the architecture prior's best family races short fine-tuning (successive halving over "
            "the SHORT_FT points, half kept per round); the other family after it by norm-only (v1's post-hoc "
            "lowest-regret cascade: tested here)",
        },
        "decision_rule": (
            f"On the tuning task only: among strategy settings costing at most {COST_CAP:.0%} of fine-tuning every "
            "candidate to the converged budget (CPU seconds, same machine, one thread, loading and preprocessing "
            "included), the lowest top-1 regret in units of the GT's seed s.d. (mean over proxy seeds); settings "
            "within 0.25 s.d. of it are tied, and among them the highest τw against the converged GT mean, then "
            "the cheapest. The score for small structures (dice or soft_dice) is part of the setting and chosen "
            "by the same rule. The chosen setting is then run unchanged on every evaluation task."
        ),
        "targets": {
            "regret_at_most_every_baseline": [
                "architecture prior",
                "LogME",
                "norm-only alone",
                "short fine-tuning at equal cost",
            ],
            "pick_in_tied_top_group": "every evaluation task (paired bootstrap over seeds and cases, one-sided 95 %)",
            "wtau_over_max_prior_logme": 0.05,
            "wtau_within_of_ceiling": 0.1,
            "within_architecture_wtau": "≥ 0.6 wherever the within-architecture ceiling is ≥ 0.6",
            "cost_at_most": COST_CAP,
            "no_fine_tune_them_all_below_budget_cap": True,
        },
        "statistics": "τw = scipy weightedtau (hyperbolic), averaged both ways; intervals: bootstrap over GT "
        "seeds, proxy seeds and test cases (1000 draws); ceiling = leave-one-seed-out τw",
    }


def committed(repo: Path, rel: str = PREREG_REL) -> str | None:
    """The commit that last changed ``rel`` in ``repo`` if the file there is unchanged since, else None."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "log", "-1", "--format=%H", "--", rel], capture_output=True, text=True, check=True
        ).stdout.strip()
        clean = subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "HEAD", "--", rel]).returncode == 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit if commit and clean else None


def require_prereg(task: str, repo: Path) -> None:
    if task == T.TUNING_TASK:
        return
    mine = PREREGISTRATION.read_bytes() if PREREGISTRATION.is_file() else None
    commit = committed(repo)
    theirs = (repo / PREREG_REL).read_bytes() if (repo / PREREG_REL).is_file() else None
    if mine is None or commit is None or mine != theirs:
        raise SystemExit(f"{task} is an evaluation task: commit {PREREG_REL} (--prereg) before its ground truth")


# ------------------------------------------------------------------------------------------------ runs


def _task(name: str, cache: Path, families=("unet3d", "nnunet", "controls")):
    from bnrank.engine.training.patches import TaskData

    spec = T.TASKS[name]
    zoo = build(cache, families)
    c0 = time.process_time()
    split = T.load_task(spec, T.write_task(spec, cache), cache)
    load_cpu = time.process_time() - c0
    return spec, zoo, TaskData(split["train"], split["val"], T.class_names(spec)), split["test"], load_cpu


@contextlib.contextmanager
def claimed(lock: Path) -> Iterator[bool]:
    """Whether this process holds ``lock`` (an flock, so a killed holder releases it): the two ground-truth processes
    meet in the middle of a task's runs, and without it both would run the run they meet at."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def run_ground_truth(tasks: list[str], cache: Path, repo: Path, reverse: bool = False) -> None:
    """Every candidate × GT seed on every task, one JSON per run; ``reverse`` walks the runs from the other end, so
    a second process shares a task's runs with the first (each skips what has landed or the other has claimed)."""
    for name in tasks:
        require_prereg(name, repo)
        spec, zoo, data, test, load_cpu = _task(name, cache)
        cfg = replace(GT, patch=spec.patch)
        cands = [c for c in zoo.candidates if not is_control(c.name)]
        rq.log(f"v2 ground truth {name}: {len(cands)} candidates × seeds {cfg.seeds}, budgets {cfg.budgets}")
        order = [(seed, cand) for seed in cfg.seeds for cand in cands]
        for seed, cand in reversed(order) if reverse else order:
            path = RESULTS / "ground_truth" / name / cand.name / f"seed{seed}.json"
            with claimed(cache / "v2-claims" / name / cand.name / f"seed{seed}.lock") as mine:
                if not mine or (path.is_file() and rq.load(path).get("zoo_key") == zoo.keys[cand.name]):
                    continue  # the other process is running it, or it has landed (read under the claim: never twice)
                t0 = time.perf_counter()
                result = rq.finetune(cand, data, test, seed, cfg.budgets, cfg)
                rq.dump(
                    path,
                    {
                        "task": name,
                        "candidate": cand.name,
                        "family": family_of(cand.name),
                        "zoo_key": zoo.keys[cand.name],
                        "weights_sha256": zoo.manifests[cand.name].get("weights_sha256"),
                        "seed": seed,
                        "config": asdict(cfg),
                        "threads": 1,
                        "code": CODE,
                        "machine": MACHINE,
                        "host": platform.node(),
                        "seconds": round(time.perf_counter() - t0, 3),
                        "load_cpu_seconds": round(load_cpu, 3),
                        **result,
                    },
                )
                shown = ", ".join(f"{p['steps']}: {p['dice']:.3f}" for p in result["budgets"])
                rq.log(f"  {name} seed {seed} {cand.name}: {shown}")


def _norm_config(spec: T.TaskSpec, lr: float, seed: int, score: str):
    from bnrank.engine.configs.training import TrainConfig

    return TrainConfig(
        max_steps=NORM_MAX,
        patch_size=(spec.patch,) * 3,
        batch_size=GT.batch,
        val_every=rq.VAL_EVERY,
        patience=10**6,
        lr=lr,
        seed=seed,
        precision=GT.precision,
        score=score,
        validation="whole",
    )


def _logme_entry(c, data, spec: T.TaskSpec, seed: int) -> dict[str, Any]:
    from bnrank.engine.logme import LogMEConfig, logme_entry

    config = _norm_config(spec, 0.01, seed, "dice")
    lm = LogMEConfig.from_train_config(config, n_batches=LOGME_BATCHES, per_class=1000)
    c0 = time.process_time()
    e = logme_entry(c, data, config, lm)
    return {
        "score": e.score if e.status == "ok" else None,
        "error": e.error,
        "cpu_seconds": round(time.process_time() - c0, 3),
    }


def _normonly_entry(c, data, spec: T.TaskSpec, lr: float, seed: int) -> dict[str, Any]:
    return normonly_run(c, data, _norm_config(spec, lr, seed, "soft_dice"))


def normonly_run(c, data, config) -> dict[str, Any]:
    """One candidate's norm-only run under ``config`` (no control), timed in wall and CPU seconds."""
    from bnrank.engine.ranking import rank_candidates

    w0, c0 = time.perf_counter(), time.process_time()
    e = rank_candidates([c], data, config, control=False).entries[0]
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {
        "status": e.status,
        "error": e.error,
        "score": e.score,
        "curve": e.curve,
        "cpu_seconds": round(cpu, 3),
        "wall_seconds": round(wall, 3),
        "cpu_per_wall": round(cpu / wall, 4) if wall > 0 else 1.0,
        "norm_kinds": e.norm_kinds,
        "trained_parameters": e.trained_parameters,
    }


def rebase_controls(cache: Path) -> None:
    """Recompute the control entries of proxy files written from other bits of the same random-init recipe.

    A control is a random initialisation; on some CPU models one seed's draw gives other bits, so a control
    rebuilt on a new machine would leave the committed proxy files scored from weights nobody can load again.
    Each candidate's proxy run is independent of the others (same data order, its own seed), so rerunning one
    control's entry with the committed bits is the run that file would hold had it been made from them; the
    file records what was rerun, from which hash and by which commit.
    """
    for folder in sorted((RESULTS / "proxies").iterdir()):
        name = folder.name
        spec, zoo, data, _, _ = _task(name, cache)
        current = {k: m.get("weights_sha256") for k, m in zoo.manifests.items()}
        by_name = {c.name: c for c in zoo.candidates}
        for path in sorted(folder.glob("*.json")):
            doc = rq.load(path)
            stale = [k for k, h in doc.get("weights_sha256", {}).items() if h != current.get(k)]
            if not stale:
                continue
            if not all(is_control(k) for k in stale):
                raise SystemExit(f"{path}: trained candidates {stale} were scored from other weights: rerun the file")
            for k in stale:
                if k in doc["entries"]:
                    if doc["method"] == "logme":
                        doc["entries"][k] = _logme_entry(by_name[k], data, spec, doc["seed"])
                    elif doc["method"] == "normonly":
                        doc["entries"][k] = _normonly_entry(by_name[k], data, spec, doc["lr"], doc["seed"])
                    else:
                        raise SystemExit(f"{path}: cannot rerun one entry of a {doc['method']!r} file")
                doc.setdefault("rebased", []).append(
                    {
                        "candidate": k,
                        "was_sha256": doc["weights_sha256"][k],
                        "code": CODE,
                        "machine": MACHINE or machine(),
                        "rerun": k in doc["entries"],
                    }
                )
                doc["weights_sha256"][k] = current[k]
            rq.dump(path, doc)
            rq.log(f"  {path.relative_to(RESULTS)}: {', '.join(stale)} rebased")


def run_proxies(tasks: list[str], cache: Path, reverse: bool = False) -> None:
    """Every proxy at every proxy seed on every task (train and validation splits only), one JSON per run;
    ``reverse`` walks a task's files from the other end, so two processes share them as the ground truth's do."""
    for name in tasks:
        _task_proxies(name, cache, reverse)


def _task_proxies(name: str, cache: Path, reverse: bool) -> None:
    spec, zoo, data, _, load_cpu = _task(name, cache)
    folder = RESULTS / "proxies" / name
    common = {
        "task": name,
        "code": CODE,
        "machine": MACHINE,
        "zoo_keys": zoo.keys,
        "weights_sha256": {k: m.get("weights_sha256") for k, m in zoo.manifests.items()},
        "load_cpu_seconds": load_cpu,
    }

    def logme(seed: int) -> dict[str, Any]:
        entries = {c.name: _logme_entry(c, data, spec, seed) for c in zoo.candidates}
        return {"method": "logme", "seed": seed, "entries": entries}

    def normonly(seed: int, lr: float) -> dict[str, Any]:
        entries = {c.name: _normonly_entry(c, data, spec, lr, seed) for c in zoo.candidates}
        return {
            "method": "normonly",
            "lr": lr,
            "configured_score": "soft_dice",
            "seed": seed,
            "max_steps": NORM_MAX,
            "entries": entries,
        }

    def shortft(seed: int) -> dict[str, Any]:
        cfg = replace(GT, patch=spec.patch, budgets=SHORT_FT)
        entries = {  # scored on the validation split, never the test split
            c.name: rq.finetune(c, data, data.val, seed, SHORT_FT, cfg)
            for c in zoo.candidates
            if not is_control(c.name)
        }
        return {"method": "shortft", "seed": seed, "budgets": list(SHORT_FT), "entries": entries}

    files: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    for seed in PROXY_SEEDS:
        files.append((f"logme_b{LOGME_BATCHES}_seed{seed}.json", partial(logme, seed)))
        files += [(f"normonly_lr{lr:g}_seed{seed}.json", partial(normonly, seed, lr)) for lr in NORM_LRS]
        files.append((f"shortft_seed{seed}.json", partial(shortft, seed)))
    for file, make in reversed(files) if reverse else files:
        path = folder / file
        with claimed(cache / "v2-claims" / name / "proxies" / f"{file}.lock") as mine:
            if not mine or (path.is_file() and rq.load(path).get("zoo_keys") == zoo.keys):
                continue
            rq.dump(path, {**common, **make()})
            rq.log(f"  {name} {file}: done")


def write_tasks(cache: Path) -> None:
    """Write every task, and record in results/v2/tasks.json its manifest and the CPU seconds of loading and
    preprocessing it from a cold cache (the part of a ranking's cost that grows with volume size)."""
    import shutil
    import tempfile

    out = {}
    for name, spec in T.TASKS.items():
        folder = T.write_task(spec, cache)
        cold = Path(tempfile.mkdtemp(prefix="bnrank-v2-pre-"))
        try:
            c0 = time.process_time()
            split = T.load_task(spec, folder, cache, pre_root=cold)
            load_cpu = time.process_time() - c0
        finally:
            shutil.rmtree(cold, ignore_errors=True)
        # and into the shared cache once, here, so the ground-truth and proxy processes never write it at once
        T.load_task(spec, folder, cache)
        manifest = json.loads((folder / "manifest.json").read_text())
        out[name] = {
            **manifest,
            "classes": T.class_names(spec)[1:],
            "preprocessed_shapes": {p: [list(v.image.shape) for v in vs] for p, vs in split.items()},
            "load_cpu_seconds": round(load_cpu, 3),
        }
        rq.log(f"v2 task {name}: {spec.n_cases} cases, cold load + preprocess {load_cpu:.1f} CPU s")
    rq.dump(RESULTS / "tasks.json", out)


def status() -> list[str]:
    lines = [f"v2 results under {RESULTS}"]
    for name in T.TASKS:
        gt = sorted((RESULTS / "ground_truth" / name).glob("*/seed*.json"))
        px = sorted((RESULTS / "proxies" / name).glob("*.json"))
        lines.append(f"  {name:<14} ground-truth runs {len(gt):>3}; proxy files {len(px):>3}")
    return lines


def main(argv: list[str] | None = None) -> int:
    global RESULTS, MACHINE
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prereg", action="store_true", help="write bench/preregistration_v2.json from the declarations")
    g.add_argument("--data", action="store_true", help="write every v2 task (and the zoo's sources)")
    g.add_argument("--zoo", action="store_true", help="build the zoo (--family to build one family)")
    g.add_argument("--ground-truth", nargs="*", metavar="TASK", help="fine-tune every candidate × GT seed")
    g.add_argument("--proxies", nargs="*", metavar="TASK", help="every proxy × proxy seed")
    g.add_argument("--status", action="store_true", help="what has landed")
    g.add_argument(
        "--rebase-controls", action="store_true", help="rerun the proxy entries of controls now made of other bits"
    )
    p.add_argument("--family", choices=("unet3d", "nnunet", "controls"), action="append")
    p.add_argument("--cache", type=Path, default=rq.DEFAULT_CACHE)
    p.add_argument("--results", type=Path, default=RESULTS, help="where raw JSON goes (bench/results/v2)")
    p.add_argument("--repo", type=Path, default=ROOT, help="the git checkout whose history holds the prereg")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reverse", action="store_true", help="walk the runs (ground truth, proxies) from the end")
    args = p.parse_args(argv)
    RESULTS = args.results
    if args.status:
        print("\n".join(status()))
        return 0
    if args.prereg:
        if any((RESULTS / "ground_truth" / t).is_dir() for t in T.EVALUATION_TASKS):
            raise SystemExit("v2 evaluation ground truth exists: a pre-registration now would not precede it")
        rq.dump(PREREGISTRATION, prereg_document())
        return 0
    from bnrank.engine.threads import configure_threads

    configure_threads(threads=args.threads)
    MACHINE = machine()
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.data:
        import zoo as Z

        for spec in Z.SOURCES.values():
            Z.write_data(spec, args.cache)
        write_tasks(args.cache)
    elif args.zoo:
        build(args.cache, tuple(args.family or ("unet3d", "nnunet", "controls")))
    elif args.ground_truth is not None:
        run_ground_truth(args.ground_truth or list(T.TASKS), args.cache, args.repo, args.reverse)
    elif args.proxies is not None:
        run_proxies(args.proxies or list(T.TASKS), args.cache, args.reverse)
    elif args.rebase_controls:
        rebase_controls(args.cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
