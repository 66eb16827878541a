"""Ranking quality: does a proxy (BN-only evaluation, LogME) order candidates as fine-tuning to convergence does?

The instrument (method: docs/ranking-quality.md; zoo and tasks: bench/zoo.py):

- ground truth: every candidate fine-tuned (all parameters, fresh head, Adam, cosine decay to 0 over the
  converged budget) on a task's train split, scored by Dice on its test split, which no proxy sees;
  5 seeds; test Dice recorded at a short, a medium and the converged budget of the same run;
- proxies see train and validation only; their raw runs are stored, settings (steps, score, halving) are
  read off them;
- every raw result is one JSON file under bench/results/; ``--report`` rebuilds every table from them.

    python bench/ranking_quality.py --zoo                      # build (or reuse) the zoo and the tasks
    python bench/ranking_quality.py --learning-curve           # the converged budget's evidence (tuning task)
    python bench/ranking_quality.py --ground-truth tuning      # resumable: one file per candidate and seed
    python bench/ranking_quality.py --proxies tuning           # the tuning sweep (BN-only lrs, LogME)
    python bench/ranking_quality.py --tune                     # writes bench/preregistration.json
    python bench/ranking_quality.py --proxies ct_head          # the pre-registered setting (and LogME)
    python bench/ranking_quality.py --report                   # every table, from the files, in seconds

The norm-only extension pool (issue 11: nnU-Net PlainConvUNet candidates, zoo.NNUNET_RECIPE) is run with
``--ground-truth TASK --only nnunet_...`` and ``--proxies TASK --only nnunet_...`` (raw proxy runs under
proxies/<task>/extension/); ``--report`` pools it with the 12 in its own table, leaving theirs as they are.

Run the training commands with ``nice -n 19 env OMP_NUM_THREADS=1 ... --threads 1`` on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import quality_stats as qs  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PREREGISTRATION = ROOT / "bench" / "preregistration.json"
DEFAULT_CACHE = Path(os.environ.get("BNRANK_BENCH_CACHE", Path.home() / ".cache" / "bnrank-bench"))


@dataclass(frozen=True)
class GTConfig:
    """The ground truth's fine-tuning: one run per candidate and seed, test Dice read at ``budgets``.

    The schedule is defined for the converged budget (the last of ``budgets``): lr decays from ``lr`` to 0
    on a cosine over ``budgets[-1]`` steps, so the short and medium points are that run's state at those
    steps, not separate runs with their own decay. ``steps`` = ``budgets[-1]``.
    """

    budgets: tuple[int, ...] = (80, 300, 600)
    lr: float = 3e-3
    schedule: str = "cosine"
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    patch: int = 24
    batch: int = 2
    precision: str = "auto"
    loss_every: int = 20

    @property
    def steps(self) -> int:
        return self.budgets[-1]


GT = GTConfig()
# Learning curve on the tuning task: the random initialisation of each architecture (the slowest to
# converge), one seed, a cosine schedule per budget; the test Dice at the end of each budget.
CURVE_CANDIDATES = ("u8_random", "u4_random", "rn10_random", "monai_random")
CURVE_BUDGETS = (200, 400, 800)
CURVE_SEED = 101  # not a ground-truth seed
# The tuning sweep: BN-only runs per lr to SWEEP_MAX steps, settings read off them; LogME at two sizes.
SWEEP_LRS = (1e-2, 3e-2, 1e-1)
SWEEP_MAX = 200
SWEEP_STEPS = (20, 50, 100, 200)
SWEEP_SCORES = ("dice", "score")  # curve keys usable as the score, where every curve point has them
SWEEP_WINDOWS = (1, 3)
SWEEP_HALVING = (None, 25, 50)
LOGME_BATCHES = (4, 8)
VAL_EVERY = 10
EXTENSION_DIR = "extension"  # proxies/<task>/extension/: the norm-only extension pool's proxy runs
PROXY_SEED = 0
COST_TARGET = 0.05  # ranking N candidates should cost at most this share of fine-tuning them to convergence
PARAMS = "params.json"  # results/params.json: each candidate's parameter count (the size baseline)
TIE = 0.02  # τ differences below this are ties when picking the pre-registered setting


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=1, default=float) + "\n")
    tmp.replace(path)


def load(path: Path) -> Any:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ setup


def prepare(cache: Path, names: Sequence[str] = ()):
    """The zoo (or only ``names`` and their parents), the tasks' folders and the disjointness check.

    With the whole zoo, writes results/zoo.json (the manifests: pretext and source curves) and tasks.json.
    ``names`` may also name the norm-only extension pool's candidates (``Z.NNUNET_RECIPE``), whose manifests
    go to results/zoo_extension.json; the whole zoo (no names) is the 12 pre-registered candidates only.
    """
    import zoo as Z

    recipe = list(Z.ZOO_RECIPE)
    if names:
        recipe = list(Z.ALL_RECIPES)
        unknown = sorted(set(names) - {r.name for r in recipe})
        if unknown:
            raise SystemExit(f"no candidate(s) {', '.join(unknown)} in the zoo recipes")
        wanted = set(names)
        for r in reversed(recipe):
            if r.name in wanted and r.parent:
                wanted.add(r.parent)
        recipe = [r for r in recipe if r.name in wanted]
    zoo = Z.build_zoo(cache, recipe, log=log)
    folders = {name: Z.write_data(spec, cache) for name, spec in Z.TASKS.items()}
    Z.check_disjoint(zoo, folders.items())
    extension = {r.name for r in Z.NNUNET_RECIPE} & set(zoo.manifests)
    if extension:
        path = RESULTS / "zoo_extension.json"
        known = load(path) if path.is_file() else {"format": Z.ZOO_FORMAT, "keys": {}, "candidates": {}}
        known["keys"].update({n: zoo.keys[n] for n in sorted(extension)})
        known["candidates"].update({n: zoo.manifests[n] for n in sorted(extension)})
        dump(path, known)
    if not names:
        dump(RESULTS / "zoo.json", {"format": Z.ZOO_FORMAT, "keys": zoo.keys, "candidates": zoo.manifests})
        dump(
            RESULTS / "tasks.json",
            {
                name: {**Z.data_manifest(f), "classes": Z.class_names(f)[1:], "evaluation": name != Z.TUNING_TASK}
                for name, f in folders.items()
            },
        )
    return zoo, folders


def task_data(task: str, cache: Path, names: Sequence[str] = ()):
    """(zoo, TaskData of the train and validation splits, test volumes) of a task."""
    import zoo as Z

    from bnrank.engine.training.patches import TaskData

    zoo, folders = prepare(cache, names)
    split = Z.load_split(folders[task], cache)
    names = Z.class_names(folders[task])
    return zoo, TaskData(split["train"], split["val"], names), split["test"]


# ------------------------------------------------------------------------------------------------ ground truth


def finetune(candidate, data, test, seed: int, budgets: Sequence[int], cfg: GTConfig = GT) -> dict[str, Any]:
    """All-parameter fine-tuning with a cosine schedule over ``budgets[-1]`` steps; test Dice at each budget.

    Built like the engine's ``finetune_candidate`` (seeded build, the ranking's fresh head, the engine's
    patch schedule, DiceCE, Adam), plus the decaying learning rate the engine's loop does not have.
    """
    import torch
    from monai.losses import DiceCELoss

    from bnrank.engine.bn_only import reinit_head
    from bnrank.engine.configs.training import TrainConfig
    from bnrank.engine.ranking import build_candidate
    from bnrank.engine.training.patches import PatchSchedule
    from bnrank.engine.training.precision import autocast
    from bnrank.engine.training.validation import evaluate, mean_foreground

    total = budgets[-1]
    config = TrainConfig(
        max_steps=total,
        patch_size=(cfg.patch,) * 3,
        batch_size=cfg.batch,
        lr=cfg.lr,
        seed=seed,
        precision=cfg.precision,
        patience=10**6,
    )
    model, arch, _ = build_candidate(candidate, data, seed)
    reinit_head(model, arch, seed)
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    model.train()
    optimiser = torch.optim.Adam(params, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total))
    )
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    schedule = PatchSchedule(data.train, config.patch_size, config.batch_size, seed, config.foreground_ratio)
    torch.manual_seed(seed)
    points, losses, recent = [], [], []
    train_seconds, eval_seconds, train_cpu, eval_cpu = 0.0, 0.0, 0.0, 0.0
    for step in range(1, total + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        x, y = schedule.next_batch()
        with autocast(config):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"{candidate.name}: loss {value} at step {step}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        train_seconds += time.perf_counter() - t0
        train_cpu += time.process_time() - c0
        recent.append(value)
        if step % cfg.loss_every == 0:
            losses.append({"step": step, "loss": float(np.mean(recent))})
            recent = []
        if step in budgets:
            t1, e1 = time.perf_counter(), time.process_time()
            per_class = [evaluate(model, [v], data.n_classes, config) for v in test]
            eval_seconds += time.perf_counter() - t1
            eval_cpu += time.process_time() - e1
            points.append(
                {
                    "steps": step,
                    "train_seconds": round(train_seconds, 3),
                    "train_cpu_seconds": round(train_cpu, 3),
                    "per_case": [mean_foreground(d) if np.isfinite(d).any() else None for d in per_class],
                    "per_case_class": [[None if not np.isfinite(v) else float(v) for v in d] for d in per_class],
                    "cases": [v.case_id for v in test],
                }
            )
            points[-1]["dice"] = float(np.mean([d for d in points[-1]["per_case"] if d is not None]))
            model.train()
    return {
        "budgets": points,
        "loss_curve": losses,
        "train_seconds": round(train_seconds, 3),
        "train_cpu_seconds": round(train_cpu, 3),
        "eval_seconds": round(eval_seconds, 3),
        "eval_cpu_seconds": round(eval_cpu, 3),
    }


def gt_path(task: str, candidate: str, seed: int) -> Path:
    return RESULTS / "ground_truth" / task / candidate / f"seed{seed}.json"


def prereg_committed() -> bool:
    """Whether the pre-registration is in the git history and unchanged since (so it precedes what follows)."""
    rel = PREREGISTRATION.relative_to(ROOT).as_posix()
    try:
        logged = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%H", "--", rel], capture_output=True, text=True, check=True
        ).stdout.strip()
        clean = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", rel]).returncode == 0
    except (OSError, subprocess.CalledProcessError):
        return False
    return bool(logged) and clean


def run_ground_truth(
    task: str, cache: Path, threads: int, only: Sequence[str] = (), allow_uncommitted: bool = False
) -> None:
    import zoo as Z

    if task != Z.TUNING_TASK and not (PREREGISTRATION.is_file() and (allow_uncommitted or prereg_committed())):
        raise SystemExit(
            f"{task} is an evaluation task: commit {PREREGISTRATION.name} (--tune) before its ground truth"
        )
    zoo, data, test = task_data(task, cache, only)  # with --only, only those candidates are built
    cands = [c for c in zoo.candidates if not only or c.name in only]
    log(f"ground truth {task}: {len(cands)} candidates × seeds {GT.seeds}, budgets {GT.budgets}, lr {GT.lr:g} cosine")
    for seed in GT.seeds:
        for cand in cands:
            path = gt_path(task, cand.name, seed)
            if (
                path.is_file()
                and load(path).get("zoo_key") == zoo.keys[cand.name]
                and load(path)["config"] == json.loads(json.dumps(asdict(GT)))
            ):
                continue
            t0 = time.perf_counter()
            result = finetune(cand, data, test, seed, GT.budgets)
            record = {
                "task": task,
                "candidate": cand.name,
                "zoo_key": zoo.keys[cand.name],
                "seed": seed,
                "config": asdict(GT),
                "threads": threads,
                "host": platform.node(),
                "seconds": round(time.perf_counter() - t0, 3),
                **result,
            }
            dump(path, record)
            shown = ", ".join(f"{p['steps']}: {p['dice']:.3f}" for p in result["budgets"])
            log(f"  {task} seed {seed} {cand.name}: {shown} ({record['seconds']:.0f}s)")


def run_learning_curve(cache: Path, threads: int) -> None:
    import zoo as Z

    zoo, data, test = task_data(Z.TUNING_TASK, cache, CURVE_CANDIDATES)
    path = RESULTS / "learning_curve.json"
    out = load(path) if path.is_file() else {"task": Z.TUNING_TASK, "seed": CURVE_SEED, "lr": GT.lr, "runs": {}}
    for cand in (c for c in zoo.candidates if c.name in CURVE_CANDIDATES):
        for steps in CURVE_BUDGETS:
            key = f"{cand.name}/{steps}"
            if key in out["runs"] and out["runs"][key].get("zoo_key") == zoo.keys[cand.name]:
                continue
            marks = sorted({steps // 4, steps // 2, 3 * steps // 4, steps})
            result = finetune(cand, data, test, CURVE_SEED, marks)
            out["runs"][key] = {
                "candidate": cand.name,
                "budget": steps,
                "zoo_key": zoo.keys[cand.name],
                "points": [
                    {"steps": p["steps"], "dice": p["dice"], "train_seconds": p["train_seconds"]}
                    for p in result["budgets"]
                ],
                "dice": result["budgets"][-1]["dice"],
                "train_seconds": result["train_seconds"],
                "loss_curve": result["loss_curve"],
            }
            dump(path, out)
            log(f"  curve {key}: test Dice {out['runs'][key]['dice']:.3f} ({result['train_seconds']:.0f}s)")


# ------------------------------------------------------------------------------------------------ proxies


def proxy_config(lr: float, steps: int, extra: dict[str, Any]):
    from bnrank.engine.configs.training import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise SystemExit(f"TrainConfig has no option(s) {unknown}")
    return TrainConfig(
        max_steps=steps,
        patch_size=(GT.patch,) * 3,
        batch_size=GT.batch,
        val_every=VAL_EVERY,
        patience=10**6,
        lr=lr,
        seed=PROXY_SEED,
        precision=GT.precision,
        **extra,
    )


def sweep_extras() -> list[dict[str, Any]]:
    """Engine options the tuning sweep crosses with the learning rates: the engine's defaults, and, where
    the engine has them, a continuous score with a whole-volume validation pass (issue 10, item 6)."""
    from bnrank.engine.configs.training import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    extras: list[dict[str, Any]] = [{}]
    if {"score", "validation"} <= names:
        extras.append({"score": "soft_dice", "validation": "whole"})
    return extras


def proxy_dir(task: str, extension: bool = False) -> Path:
    """Where a task's raw proxy runs are: the pre-registered pool's, or (``extension``) the norm-only
    extension pool's runs of the same settings, in a subfolder the headline tables never read. Runs at
    another proxy seed than ``PROXY_SEED``'s registered 0 go to ``seed<k>/`` (read by the proxy-noise lines)."""
    folder = RESULTS / "proxies" / task
    if PROXY_SEED != 0:
        folder = folder / f"seed{PROXY_SEED}"
    return folder / EXTENSION_DIR if extension else folder


def proxy_seed_dirs(task: str) -> dict[int, Path]:
    """{proxy seed: folder} of a task's proxy runs: the registered seed 0 and every ``seed<k>/`` beside it."""
    folder = RESULTS / "proxies" / task
    found = {0: folder} if folder.is_dir() else {}
    for d in sorted(folder.glob("seed*")) if folder.is_dir() else []:
        if d.is_dir() and d.name[4:].isdigit():
            found[int(d.name[4:])] = d
    return found


def run_bn_only(
    task: str, cands, data, zoo, lr: float, steps: int, extra: dict[str, Any], extension: bool = False
) -> None:
    from bnrank.engine.ranking import rank_candidates

    tag = "".join(f"_{k}-{v}" for k, v in sorted(extra.items()))
    path = proxy_dir(task, extension) / f"bnonly_lr{lr:g}_{steps}{tag}.json"
    if path.is_file() and load(path).get("zoo_keys") == zoo.keys:
        return
    config = proxy_config(lr, steps, extra)
    t0 = time.perf_counter()
    entries, result = {}, None
    for cand in cands:  # one at a time, to read each candidate's CPU time beside its wall time
        w0, c0 = time.perf_counter(), time.process_time()
        result = rank_candidates([cand], data, config, control=False)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        e = result.entries[0]
        if e.status != "ok":
            raise SystemExit(f"BN-only failed on {e.checkpoint}: {e.error}")
        entries[e.checkpoint] = {
            "score": e.score,
            "seconds": e.seconds,
            "overhead": round(e.seconds - (e.curve[-1]["seconds"] if e.curve else 0), 3),
            "cpu_per_wall": round(cpu / wall, 4) if wall > 0 else 1.0,
            "curve": e.curve,
            "gamma": e.gamma,
            "dice_per_class": e.dice_per_class,
            # what norm-only evaluation trained, and through which loader the checkpoint came (mixed pools)
            "architecture": e.architecture,
            "format": (e.load_report or {}).get("format"),
            "norm_kinds": e.norm_kinds,
            "trained_parameters": e.trained_parameters,
            "inserted_affines": e.inserted_affines,
        }
    assert result is not None
    dump(
        path,
        {
            "task": task,
            "method": "bnonly",
            "lr": lr,
            "max_steps": steps,
            "extra": extra,
            "val_every": VAL_EVERY,
            "seed": PROXY_SEED,
            "zoo_keys": zoo.keys,
            "config": result.config,
            "entries": entries,
            "seconds": round(time.perf_counter() - t0, 3),
        },
    )
    log(f"  BN-only {task} lr {lr:g}: " + ", ".join(f"{k} {v['score']:.3f}" for k, v in entries.items()))


def run_logme(task: str, cands, data, zoo, batches: int, extension: bool = False) -> None:
    from bnrank.engine.logme import LogMEConfig, logme_entry

    path = proxy_dir(task, extension) / f"logme_b{batches}.json"
    if path.is_file() and load(path).get("zoo_keys") == zoo.keys:
        return
    config = proxy_config(1e-2, 1, {})
    lm = LogMEConfig.from_train_config(config, n_batches=batches, per_class=1000)
    entries = {}
    for c in cands:
        c0 = time.process_time()
        e = logme_entry(c, data, config, lm)
        entries[e.checkpoint] = {
            "score": e.score if e.status == "ok" else None,
            "seconds": round(time.process_time() - c0, 3),
            "wall_seconds": e.seconds,
            "error": e.error,
        }
    dump(path, {"task": task, "method": "logme", "batches": batches, "zoo_keys": zoo.keys, "entries": entries})
    shown = (f"{k} {v['score']:.3f}" if v["score"] is not None else f"{k} FAILED" for k, v in entries.items())
    log(f"  LogME {task} b{batches}: " + ", ".join(shown))


def run_proxies(task: str, cache: Path, extra: dict[str, Any], only: Sequence[str] = ()) -> None:
    """The proxies of a task; with ``only`` (extension-pool candidates), those candidates alone, at the
    pre-registered setting and LogME, into the task's extension folder."""
    import zoo as Z

    extension = bool(only)
    if extension:
        outside = sorted(set(only) - {r.name for r in Z.NNUNET_RECIPE})
        if outside or task == Z.TUNING_TASK:
            raise SystemExit(
                "--proxies --only runs the norm-only extension pool "
                f"({', '.join(r.name for r in Z.NNUNET_RECIPE)}) on an evaluation task; "
                + (f"not {', '.join(outside)}" if outside else f"not on {task}")
            )
    zoo, data, _ = task_data(task, cache, only)  # the test split is dropped here: proxies never see it
    cands = [c for c in zoo.candidates if not only or c.name in only]
    for batches in LOGME_BATCHES:
        run_logme(task, cands, data, zoo, batches, extension)
    if task == Z.TUNING_TASK:
        for options in [extra] if extra else sweep_extras():
            for lr in SWEEP_LRS:
                run_bn_only(task, cands, data, zoo, lr, SWEEP_MAX, options)
        return
    if not PREREGISTRATION.is_file():
        raise SystemExit(f"no {PREREGISTRATION.name}: run --tune on the tuning task first")
    s = load(PREREGISTRATION)["setting"]
    if s["method"] == "bnonly":
        run_bn_only(task, cands, data, zoo, s["lr"], s["steps"], {**s.get("extra", {}), **extra}, extension)


# ------------------------------------------------------------------------------------------------ reading results


def headline_candidates() -> set[str] | None:
    """The pre-registered pool (results/zoo.json's candidates); None when no zoo.json (all are read)."""
    path = RESULTS / "zoo.json"
    return set(load(path)["keys"]) if path.is_file() else None


def extension_candidates() -> list[str]:
    """The norm-only extension pool's candidates (results/zoo_extension.json), in recipe order."""
    path = RESULTS / "zoo_extension.json"
    return list(load(path)["keys"]) if path.is_file() else []


def run_class(record: Mapping[str, Any]) -> str:
    """Which machine made a raw result, as far as it says: its recorded CPU and precision, else the run (the commit a
    run_v2.sh snapshot computed from, one machine per run), else "unrecorded". CPU seconds compare only within one
    class: a CPU with native bf16 trained these networks about 7x faster than one without (docs/ranking-quality.md).
    """
    m = record.get("machine")
    if isinstance(m, Mapping):
        return f"{m.get('cpu', '?')}, {m.get('precision', '?')}"
    code = record.get("code")
    return f"run {str(code)[:10]}" if code else "unrecorded"


def read_gt(task: str, candidates: Sequence[str] | None = None, root: Path | None = None) -> dict[str, Any] | None:
    """{candidates, seeds, budgets, gt: {budget: [seeds, cands, cases]}, train_seconds: [seeds, cands],
    classes: [seeds][cands] (each run's :func:`run_class`)}.

    Of ``candidates`` only; by default of the pre-registered pool, so the headline tables stay computed over
    the candidates they were registered on when extension candidates' runs sit beside theirs. ``root`` is
    another benchmark's results folder (v2's), by default this one's.
    """
    folder = (root or RESULTS) / "ground_truth" / task
    if not folder.is_dir():
        return None
    wanted = set(candidates) if candidates is not None else headline_candidates()
    records = [load(p) for p in sorted(folder.glob("*/seed*.json"))]
    records = [r for r in records if wanted is None or r["candidate"] in wanted]
    if not records:
        return None
    cands = sorted({r["candidate"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    table = {(r["candidate"], r["seed"]): r for r in records}
    complete = [s for s in seeds if all((c, s) in table for c in cands)]
    if not complete:
        return None
    budgets = [p["steps"] for p in table[(cands[0], complete[0])]["budgets"]]
    gt = {}
    for i, b in enumerate(budgets):
        gt[b] = np.array(
            [
                [[np.nan if d is None else d for d in table[(c, s)]["budgets"][i]["per_case"]] for c in cands]
                for s in complete
            ]
        )

    def cpu(point: dict[str, Any]) -> float:
        return point.get("train_cpu_seconds", point["train_seconds"])

    # CPU seconds of training up to each budget (the short points are prefixes of the converged run)
    budget_seconds = {
        b: np.array([[cpu(table[(c, s)]["budgets"][i]) for c in cands] for s in complete])
        for i, b in enumerate(budgets)
    }
    seconds = budget_seconds[budgets[-1]]
    return {
        "candidates": cands,
        "seeds": complete,
        "budgets": budgets,
        "gt": gt,
        "train_seconds": seconds,
        "budget_seconds": budget_seconds,
        "classes": [[run_class(table[(c, s)]) for c in cands] for s in complete],
        "incomplete_seeds": [s for s in seeds if s not in complete],
        "config": table[(cands[0], complete[0])]["config"],
    }


def proxy_settings(
    task: str, cands: Sequence[str], extension: bool = False, folder: Path | None = None
) -> dict[str, dict[str, Any]]:
    """Every setting readable off the task's raw proxy runs: {id: {setting, scores [cands], seconds}}.

    With ``extension``, each run's entries are joined with the extension pool's run of the same setting
    (same file name in the extension folder), so the pooled candidates are scored by one setting. ``folder``
    reads another proxy seed's runs (``proxy_seed_dirs``) instead of the registered seed's.
    """
    out: dict[str, dict[str, Any]] = {}
    folder = folder or RESULTS / "proxies" / task
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        run = load(path)
        e = run["entries"]
        more = proxy_dir(task, True) / path.name
        if extension and more.is_file():
            e = {**e, **load(more)["entries"]}
        if any(c not in e for c in cands):
            continue
        if run["method"] == "logme":
            s = {"method": "logme", "batches": run["batches"]}
            out[qs.setting_id(s)] = {
                "setting": s,
                "scores": qs.failed_last([e[c]["score"] for c in cands]),
                "failed": [c for c in cands if e[c]["score"] is None],
                "seconds": sum(e[c]["seconds"] for c in cands),
            }
            continue
        curves = {c: e[c]["curve"] for c in cands}
        overhead = {c: e[c]["overhead"] for c in cands}
        scale = {c: e[c].get("cpu_per_wall", 1.0) for c in cands}
        configured = run.get("extra", {}).get("score", "dice")  # what the engine's "score" key holds
        keys = [k for k in SWEEP_SCORES if all(k in p for c in cands for p in curves[c])]
        if configured == "dice" and "score" in keys and "dice" in keys:
            keys.remove("score")  # the same numbers twice
        for key in keys:
            for window in SWEEP_WINDOWS:
                score = f"{configured if key == 'score' else key}{window}"
                for steps in SWEEP_STEPS:
                    if steps > run["max_steps"]:
                        continue
                    for first in SWEEP_HALVING:
                        s = {
                            "method": "bnonly",
                            "lr": run["lr"],
                            "steps": steps,
                            "score": score,
                            "halving": first,
                            "extra": run.get("extra", {}),
                        }
                        if first is None:
                            scores, secs = qs.prefix_setting(curves, overhead, steps, key, window, scale)
                            stopped = None
                        elif first * 2 <= steps:
                            scores, secs, stopped = qs.halving(curves, overhead, first, steps, key, window, scale)
                        else:
                            continue
                        out[qs.setting_id(s)] = {
                            "setting": s,
                            "scores": [scores[c] for c in cands],
                            "seconds": secs,
                            "stopped": stopped,
                        }
    return out


def evaluate_settings(gt: dict[str, Any], settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Point agreement of each setting with the converged GT mean, and its cost ratio."""
    conv = gt["gt"][gt["budgets"][-1]]
    mean = qs.gt_mean(conv)
    ft = float(gt["train_seconds"].mean(axis=0).sum())
    out = {}
    for sid, s in settings.items():
        out[sid] = {
            **s,
            "wtau": qs.wtau(s["scores"], mean),
            "wtau_vs_seeds": float(np.nanmean([qs.wtau(s["scores"], r) for r in qs.seed_scores(conv)])),
            "top1_in_top2": qs.top1_in_top(s["scores"], mean, 2),
            "cost_ratio": s["seconds"] / ft,
        }
    return out


def pick_setting(evaluated: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """The pre-registration rule: among BN-only settings within the cost target, the best weighted τ;
    settings within TIE of the best are tied, and among them top-1-in-top-2 first, then the cheapest."""
    pool = {k: v for k, v in evaluated.items() if v["setting"]["method"] == "bnonly" and math.isfinite(v["wtau"])}
    within = {k: v for k, v in pool.items() if v["cost_ratio"] <= COST_TARGET}
    note = f"BN-only settings costing at most {COST_TARGET:.0%} of converged fine-tuning"
    if not within:
        within, note = pool, f"no BN-only setting costs at most {COST_TARGET:.0%} of converged fine-tuning: all of them"
    best = max(v["wtau"] for v in within.values())
    tied = [k for k, v in within.items() if v["wtau"] >= best - TIE]
    tied.sort(key=lambda k: (not within[k]["top1_in_top2"], within[k]["seconds"]))
    return tied[0], note


# ------------------------------------------------------------------------------------------------ tune, report


def digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.relative_to(RESULTS).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def run_tune() -> None:
    import zoo as Z

    evaluation_gt = [t for t in Z.EVALUATION_TASKS if (RESULTS / "ground_truth" / t).is_dir()]
    if evaluation_gt:
        raise SystemExit(f"evaluation ground truth already exists ({evaluation_gt}): tuning now would not be blind")
    gt = read_gt(Z.TUNING_TASK)
    if gt is None or len(gt["seeds"]) < len(GT.seeds):
        raise SystemExit("the tuning task's ground truth is not complete (--ground-truth tuning)")
    settings = proxy_settings(Z.TUNING_TASK, gt["candidates"])
    if not settings:
        raise SystemExit("no proxy runs on the tuning task (--proxies tuning)")
    evaluated = evaluate_settings(gt, settings)
    chosen, note = pick_setting(evaluated)
    ranked = sorted(evaluated, key=lambda k: -evaluated[k]["wtau"] if math.isfinite(evaluated[k]["wtau"]) else 9)
    files = list((RESULTS / "ground_truth" / Z.TUNING_TASK).glob("*/*.json"))
    files += list((RESULTS / "proxies" / Z.TUNING_TASK).glob("*.json"))
    c = evaluated[chosen]
    dump(
        PREREGISTRATION,
        {
            "what": "proxy settings fixed on the tuning task before any evaluation task's ground truth exists",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "setting_id": chosen,
            "setting": c["setting"],
            "baseline": {"method": "logme", "batches": max(LOGME_BATCHES)},
            "rule": f"{note}; the highest weighted τ against the tuning task's converged ground-truth mean, "
            f"τ within {TIE} tied, then top-1 in the GT top 2, then the fewest seconds",
            "on_tuning": {k: c[k] for k in ("wtau", "wtau_vs_seeds", "top1_in_top2", "cost_ratio", "seconds")},
            "tuning_ceiling": qs.ceiling(gt["gt"][gt["budgets"][-1]]),
            "ground_truth": asdict(GT),
            "evaluation_tasks": list(Z.EVALUATION_TASKS),
            "targets": {
                "wtau_at_least_ceiling": True,
                "wtau_over_logme": 0.1,
                "top1_in_gt_top2": True,
                "cost_ratio_at_most": COST_TARGET,
            },
            "zoo_keys": load(RESULTS / "zoo.json")["keys"],
            "tuning_inputs_sha256": digest(files),
            "tuning_sweep": [
                {"id": k, **{m: evaluated[k][m] for m in ("wtau", "top1_in_top2", "cost_ratio")}} for k in ranked
            ],
        },
    )
    log(f"pre-registered {chosen}: τw {c['wtau']:.3f}, cost {c['cost_ratio']:.3f}× converged fine-tuning")


def f2(x: Any, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, bool | np.bool_):
        return "yes" if x else "no"
    return format(x, spec)


def report_zoo() -> list[str]:
    path = RESULTS / "zoo.json"
    if not path.is_file():
        return ["(no bench/results/zoo.json: run --zoo)"]
    z = load(path)["candidates"]
    lines = ["ZOO", f"{'candidate':<24} {'architecture':<23} {'made by':<11} {'build s':>7}  evidence"]
    extension = RESULTS / "zoo_extension.json"
    more = load(extension)["candidates"] if extension.is_file() else {}
    for name, m in [*z.items(), *more.items()]:
        if name in more and name == next(iter(more)):
            lines.append("norm-only extension pool (issue 11; not in the pre-registered tables):")
        r = m["recipe"]
        ev = ""
        if "flattening" in m:
            f = m["flattening"]
            ev = (
                f"pretext MSE {f['first']:.3f} -> {f['last']:.3f}; drop over the last fifth "
                f"{f['drop_last_fifth']:.1%} (fifth before {f['drop_fifth_before']:.1%})"
            )
        elif "source_dice" in m:
            ev = f"source validation Dice {m['source_dice']:.3f} ({r['steps']} steps)"
        elif r["make"] == "damaged":
            ev = f"{r['share']:.0%} of filters of {r['parent']} replaced"
        lines.append(f"{name:<24} {architecture_label(r):<23} {r['make']:<11} {m['seconds']:7.0f}  {ev}")
    return lines


def architecture_label(r: dict[str, Any]) -> str:
    """A candidate's architecture as the benchmark groups candidates (a width is another architecture)."""
    arch = r["architecture"] + (f" w{r['build']['width']}" if r["build"].get("width") else "")
    if r.get("network_def"):
        arch = f"monai {r['network_def']['_target_']} " + "-".join(str(c) for c in r["network_def"]["channels"])
    if r["architecture"] == "nnunet":
        cls = str(r["build"]["network_class_name"]).rsplit(".", 1)[-1].replace("ConvUNet", "Conv")
        features = r["build"]["arch_kwargs"]["features_per_stage"]
        arch = f"nnunet {cls} {features[0]}-{features[-1]}"
    return arch


def zoo_facts() -> tuple[dict[str, str], dict[str, int]]:
    """(architecture of every candidate, its parameter count) from results/zoo*.json and params.json."""
    arch: dict[str, str] = {}
    for name in ("zoo.json", "zoo_extension.json"):
        if (RESULTS / name).is_file():
            arch.update({c: architecture_label(m["recipe"]) for c, m in load(RESULTS / name)["candidates"].items()})
    params = load(RESULTS / PARAMS)["parameters"] if (RESULTS / PARAMS).is_file() else {}
    return arch, params


def run_params() -> None:
    """Every recipe's parameter count (1 input channel, 2 classes: the head differs by task, the body not)."""
    import zoo as Z

    counts = {r.name: sum(p.numel() for p in Z._build(r, 1, 2).parameters()) for r in Z.ALL_RECIPES}
    dump(
        RESULTS / PARAMS,
        {"what": "parameters of each candidate's network, 1 input channel, 2 classes", "parameters": counts},
    )


def report_curve() -> list[str]:
    path = RESULTS / "learning_curve.json"
    if not path.is_file():
        return ["(no learning curve yet: --learning-curve)"]
    lc = load(path)
    cands = sorted({r["candidate"] for r in lc["runs"].values()})
    budgets = sorted({r["budget"] for r in lc["runs"].values()})
    lines = [
        f"LEARNING CURVE (task {lc['task']}, seed {lc['seed']}, lr {lc['lr']:g} cosine to 0 over each budget; "
        f"test Dice at the end; converged budget used: {GT.steps})",
        f"{'candidate':<16} " + " ".join(f"{b:>7}" for b in budgets),
    ]
    for c in cands:
        cells = [lc["runs"].get(f"{c}/{b}") for b in budgets]
        lines.append(f"{c:<16} " + " ".join(f"{x['dice']:7.3f}" if x else f"{'':>7}" for x in cells))
    for c in cands:
        run = lc["runs"].get(f"{c}/{budgets[-1]}")
        if run:
            inside = ", ".join(f"{p['steps']}: {p['dice']:.3f}" for p in run["points"])
            lines.append(f"  inside the {budgets[-1]}-step run of {c}: {inside}")
    full = [c for c in cands if all(f"{c}/{b}" in lc["runs"] for b in budgets)]
    if full and len(budgets) > 1:
        top = budgets[-1]
        gaps = [max(lc["runs"][f"{c}/{top}"]["dice"] - lc["runs"][f"{c}/{b}"]["dice"] for c in full) for b in budgets]
        lines.append(
            f"largest gain still to come by {top} steps (over {', '.join(full)}): "
            + ", ".join(f"{b}: {g:+.3f}" for b, g in zip(budgets, gaps, strict=True))
        )
    return lines


def report_task(task: str, prereg: dict[str, Any] | None, boot: int, summary: dict | None = None) -> list[str]:
    """The task's tables; its headline numbers go into ``summary`` (for the targets)."""
    gt = read_gt(task)
    if gt is None:
        return [f"TASK {task}: no complete ground-truth seed yet"]
    cands, budgets = gt["candidates"], gt["budgets"]
    conv = gt["gt"][budgets[-1]]
    mean = qs.gt_mean(conv)
    lines = [
        f"TASK {task}: {len(cands)} candidates, seeds {gt['seeds']}"
        + (f" (incomplete: {gt['incomplete_seeds']})" if gt["incomplete_seeds"] else "")
        + f", {conv.shape[2]} test cases; GT = test Dice after {budgets[-1]} steps (cosine)"
    ]
    # Per candidate, per budget.
    lines.append(f"{'candidate':<24} " + " ".join(f"{'GT @' + str(b):>15}" for b in budgets) + f" {'FT cpu s':>9}")
    for i in np.argsort(-mean):
        cells = []
        for b in budgets:
            s = qs.seed_scores(gt["gt"][b])[:, i]
            cells.append(f"{s.mean():.3f} ± {s.std():.3f}".rjust(15))
        lines.append(f"{cands[i]:<24} " + " ".join(cells) + f" {gt['train_seconds'][:, i].mean():9.0f}")
    # How the order moves with budget.
    moves = []
    for b in budgets[:-1]:
        m = qs.gt_mean(gt["gt"][b])
        moves.append(f"{b} steps: τw {f2(qs.wtau(m, mean))}, top-1 {cands[int(np.argmax(m))]}")
    lines.append(f"GT order vs the converged one ({cands[int(np.argmax(mean))]} first): " + "; ".join(moves))
    # Proxies.
    settings = proxy_settings(task, cands)
    if not settings:
        lines.append("no proxy results yet")
        return lines
    ev = evaluate_settings(gt, settings)
    rows: list[tuple[str, str]] = []
    if prereg and prereg["setting_id"] in ev:
        rows.append(("pre-registered", prereg["setting_id"]))
    finite = [k for k in ev if math.isfinite(ev[k]["wtau"]) and ev[k]["setting"]["method"] == "bnonly"]
    if finite:
        best = max(finite, key=lambda k: ev[k]["wtau"])
        if not rows or best != rows[0][1]:
            rows.append(("best BN-only here (hindsight)", best))
    rows += [("baseline", k) for k in ev if ev[k]["setting"]["method"] == "logme"]
    b = qs.bootstrap(conv, {k: ev[k]["scores"] for _, k in rows}, n=boot)
    ceil = b["ceiling"]
    lines.append(
        f"ceiling (leave-one-seed-out τw): {ceil['value']:.2f} [{ceil['lo']:.2f}, {ceil['hi']:.2f}]; "
        f"fine-tuning all candidates once to convergence: {gt['train_seconds'].mean(0).sum():.0f} CPU s"
    )
    head = f"{'':<30} {'setting':<44} {'τw vs GT [95% CI]':>22} {'τw vs seed':>10} {'top1∈top2':>9}"
    head += f" {'cpu s':>7} {'× FT':>6}"
    lines += [head]
    for label, k in rows:
        e, ci = ev[k], b[k]
        lines.append(
            f"{label:<30} {k:<44} {f2(ci['value']):>6} [{f2(ci['lo'])}, {f2(ci['hi'])}]".ljust(98)
            + f" {f2(e['wtau_vs_seeds']):>10} {f2(e['top1_in_top2']):>9} {e['seconds']:7.0f} {e['cost_ratio']:6.3f}"
        )
    for k in dict.fromkeys(k for _, k in rows):
        failed = ev[k].get("failed") or []
        if failed:
            keep = [i for i, c in enumerate(cands) if c not in failed]
            sub = qs.wtau([ev[k]["scores"][i] for i in keep], mean[keep]) if len(keep) > 1 else float("nan")
            lines.append(
                f"  {k}: failed on {len(failed)} of {len(cands)} candidates ({', '.join(failed)}), ranked last; "
                f"τw over the {len(keep)} it scored: {f2(sub)}"
            )
    if summary is not None and rows and rows[0][0] == "pre-registered":
        k = rows[0][1]
        logme = [b[x]["value"] for lbl, x in rows if lbl == "baseline" and x == qs.setting_id(prereg["baseline"])]
        summary[task] = {
            "wtau": b[k]["value"],
            "ceiling": ceil["value"],
            "top1_in_top2": ev[k]["top1_in_top2"],
            "cost_ratio": ev[k]["cost_ratio"],
            "logme": logme[0] if logme else float("nan"),
        }
    # Per candidate: GT and the rows' scores.
    lines.append(f"{'candidate':<24} {'GT':>6} " + " ".join(f"{lbl[:12]:>12}" for lbl, _ in rows))
    for i in np.argsort(-mean):
        lines.append(f"{cands[i]:<24} {mean[i]:6.3f} " + " ".join(f"{ev[k]['scores'][i]:12.3f}" for _, k in rows))
    return lines


# ------------------------------------------------------------------------------------------------ baselines

SHORT_FT = 80  # the shortest ground-truth point: the short full fine-tuning the raw data holds
RACE_TOP = 3  # the "norm-only top k, then short fine-tuning" cascade's k


@dataclass
class Row:
    """One order of the candidates in the baselines table.

    ``scores`` is one vector, or ([seeds, candidates]) one per ground-truth seed when the order is made from
    that seed's own short fine-tuning run (then judged against the other seeds only); ``cost`` is CPU seconds
    (per seed for the latter), ``note`` what it is."""

    label: str
    scores: Any
    cost: Any
    note: str = ""
    held_out: bool = False


def baseline_rows(task: str, gt: dict[str, Any], prereg: dict[str, Any] | None) -> tuple[list[Row], str]:
    """Every baseline and cascade the committed raw results allow on ``task`` (and what they leave out)."""
    import baseline_stats as bs

    tuning, _ = task_names()
    cands = gt["candidates"]
    arch_of, params = zoo_facts()
    archs = [arch_of.get(c, "?") for c in cands]
    ev = evaluate_settings(gt, proxy_settings(task, cands))
    rows: list[Row] = []
    missing: list[str] = []
    norm = ev.get(prereg["setting_id"]) if prereg else None
    if norm:
        rows.append(Row("norm-only (pre-registered)", norm["scores"], norm["seconds"], prereg["setting_id"]))
    else:
        missing.append("norm-only (no pre-registered run)")
    logme = ev.get(qs.setting_id(prereg["baseline"])) if prereg else None
    if logme:
        rows.append(Row("LogME", logme["scores"], logme["seconds"], qs.setting_id(prereg["baseline"])))
    tgt = read_gt(tuning)
    if tgt is not None and not all(c in arch_of for c in (*cands, *tgt["candidates"])):
        tgt = None
        missing.append("architecture prior and the cascades built on it (a candidate's architecture is unknown)")
    if tgt is not None:
        prior = bs.architecture_prior(
            dict(zip(tgt["candidates"], qs.gt_mean(tgt["gt"][tgt["budgets"][-1]]), strict=True)), arch_of, cands
        )
        rows.append(
            Row(
                "architecture prior",
                prior,
                0.0,
                "tuning task's GT mean per architecture, no data" + (" (IN SAMPLE here)" if task == tuning else ""),
            )
        )
    if params and all(c in params for c in cands):
        rows.append(Row("parameter count", [float(params[c]) for c in cands], 0.0, "more parameters first"))
    else:
        missing.append("parameter count (no results/params.json: --params)")
    rows.append(Row("random pick", None, 0.0, "expected value over uniform picks and orders"))
    short = SHORT_FT if SHORT_FT in gt["gt"] else None
    if short:
        ft = qs.seed_scores(gt["gt"][short])  # [seeds, cands]: test Dice of each seed's run at `short` steps
        ft_cost = gt["budget_seconds"][short]
        rows.append(
            Row(
                f"short FT {short} st",
                ft,
                ft_cost.sum(axis=1),
                "all parameters, the GT run's prefix; TEST Dice; judged vs the other seeds",
                True,
            )
        )
    else:
        missing.append(f"short fine-tuning (no {SHORT_FT}-step ground-truth point)")
    if tgt is not None and norm:
        rows.append(
            Row(
                "prior → norm-only within arch",
                bs.lexicographic(prior, norm["scores"]),
                norm["seconds"],
                "architectures by the prior, candidates of one architecture by norm-only",
            )
        )
    randoms = {a: i for i, (c, a) in enumerate(zip(cands, archs, strict=True)) if c.endswith("_random")}
    if norm and all(a in randoms for a in archs):
        s = norm["scores"]
        rows.append(
            Row(
                "norm-only gain over own random",
                [s[i] - s[randoms[a]] for i, a in enumerate(archs)],
                norm["seconds"],
                "score minus its architecture's random-init candidate's score",
            )
        )
    if norm and short:
        for label, members in (
            ("norm-only → FT race of arch leaders", bs.leaders(norm["scores"], archs)),
            (f"norm-only top {RACE_TOP} → FT race", bs.top_k(norm["scores"], RACE_TOP)),
        ):
            rows.append(
                Row(
                    label,
                    np.array([bs.race(norm["scores"], members, f) for f in ft]),
                    norm["seconds"] + ft_cost[:, members].sum(axis=1),
                    f"{len(members)} candidates race {short} FT steps; the rest by norm-only",
                    True,
                )
            )
    if tgt is not None and short:
        top_arch = archs[int(np.argmax(prior))]
        members = [i for i, a in enumerate(archs) if a == top_arch]
        base = bs.lexicographic(prior, norm["scores"]) if norm else prior
        rows.append(
            Row(
                "prior → FT race in top arch",
                np.array([bs.race(base, members, f) for f in ft]),
                ft_cost[:, members].sum(axis=1),
                f"{len(members)} {top_arch} candidates race {short} FT steps",
                True,
            )
        )
    return rows, "; ".join(missing)


def report_baselines(
    task: str, prereg: dict[str, Any] | None, boot: int, summary: dict[str, dict] | None = None
) -> list[str]:
    """Every baseline and cascade beside norm-only, with τw, top-1 regret, the pick's place in the ground
    truth's tied top group and the cost, over all candidates and within each architecture; each row's measures
    go into ``summary[task]`` (for the summary over the evaluation tasks)."""
    import baseline_stats as bs

    gt = read_gt(task)
    if gt is None:
        return []
    cands = gt["candidates"]
    conv = gt["gt"][gt["budgets"][-1]]
    ft_all = float(gt["train_seconds"].mean(axis=0).sum())
    rows, missing = baseline_rows(task, gt, prereg)
    group, sd = bs.tied_top_group(conv, n=boot), bs.seed_sd(conv)
    fixed = {r.label: r.scores for r in rows if r.scores is not None and not r.held_out}
    ci = qs.bootstrap(conv, fixed, n=boot)
    lines = [
        f"BASELINES AND CASCADES {task}: truth = converged GT mean over seeds {gt['seeds']}; seed s.d. {sd:.4f}; "
        f"tied top group (paired bootstrap, one-sided 95 %): {', '.join(cands[i] for i in group)}",
        f"{'order':<37} {'τw [95% CI]':<21} {'regret':>7} {'/ sd':>6} {'pick':<22} {'in tied':>7} {'× FT':>7}",
    ]
    measured: dict[str, dict[str, float]] = {}
    for r in rows:
        if r.scores is None:
            m = bs.random_pick(qs.gt_mean(conv), group)
            m["regret_sd"] = m["regret"] / sd
            lines.append(
                f"{r.label:<37} {f2(m['wtau']):>5} (expected)".ljust(59) + f" {m['regret']:7.3f} "
                f"{f2(m['regret_sd'], '.1f'):>6} {'(any)':<22} {m['in_group']:7.2f} {0:7.3f}  {r.note}"
            )
            measured[r.label] = {**m, "cost": 0.0}
            continue
        if r.held_out:
            m = bs.held_out_seed(np.asarray(r.scores), conv, n=boot)
            cost = float(np.mean(r.cost)) / ft_all
            span = f"{f2(m['wtau']):>5} [{f2(m['wtau_lo'])}, {f2(m['wtau_hi'])}]*"
            pick = "per seed"
        else:
            m = bs.measures(r.scores, conv, group, sd)
            cost = float(r.cost) / ft_all
            span = f"{f2(ci[r.label]['value']):>5} [{f2(ci[r.label]['lo'])}, {f2(ci[r.label]['hi'])}]"
            p = bs.picks(r.scores)
            pick = cands[p[0]] if len(p) == 1 else f"{len(p)} tied"
        measured[r.label] = {**m, "cost": cost}
        lines.append(
            f"{r.label:<37} {span:<21} {m['regret']:7.3f} {f2(m['regret_sd'], '.1f'):>6} {pick:<22} "
            f"{m['in_group']:7.2f} {cost:7.3f}  {r.note}"
        )
    lines.append(
        "  regret: Dice of the GT best minus that of the pick (/ sd: in the GT's seed s.d.); in tied: share "
        "of the pick inside the tied top group; × FT: CPU seconds / fine-tuning every candidate to "
        "convergence (same machine, one thread); * judged per seed against the other seeds' mean, [min, "
        "max] over seeds, not a bootstrap interval" + (f"; not available: {missing}" if missing else "")
    )
    if summary is not None:
        summary[task] = measured
    lines += _within_architecture(task, gt, rows, boot)
    return lines


def report_proxy_noise(task: str, prereg: dict[str, Any] | None, boot: int) -> list[str]:
    """The pre-registered norm-only setting and LogME at every proxy seed run so far (``--proxy-seed``): τw
    and regret of the mean over proxy seeds, with intervals over GT seeds, proxy seeds and test cases, and
    each proxy's seed-to-seed agreement. Nothing is printed while only the registered seed exists."""
    import baseline_stats as bs

    gt = read_gt(task)
    dirs = proxy_seed_dirs(task)
    if gt is None or prereg is None or len(dirs) < 2:
        return []
    cands, conv = gt["candidates"], gt["gt"][gt["budgets"][-1]]
    lines = [f"PROXY NOISE {task}: proxy seeds {sorted(dirs)} (intervals over GT seeds × proxy seeds × test cases)"]
    for sid in (prereg["setting_id"], qs.setting_id(prereg["baseline"])):
        rows, seeds = [], []
        for seed, folder in dirs.items():
            got = proxy_settings(task, cands, folder=folder).get(sid)
            if got is not None:
                rows.append(got["scores"])
                seeds.append(seed)
        if len(rows) < 2:
            lines.append(f"  {sid}: {len(rows)} proxy seed(s) with every candidate")
            continue
        b = bs.bootstrap_proxy_seeds(conv, np.asarray(rows), n=boot)
        w, r = b["wtau"], b["regret"]
        lines.append(
            f"  {sid} at seeds {seeds}: τw {f2(w['value'])} [{f2(w['lo'])}, {f2(w['hi'])}], regret "
            f"{r['value']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}], seed-to-seed τw {f2(b['self_agreement']['value'])}"
        )
    return lines


def report_baselines_summary(baselines: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Every order over the evaluation tasks: mean τw, worst and mean regret, picks in the tied group, cost."""
    if not baselines:
        return []
    tasks = list(baselines)
    labels = list(dict.fromkeys(k for t in tasks for k in baselines[t]))
    lines = [
        f"BASELINES OVER THE EVALUATION TASKS ({', '.join(tasks)}; out of sample)",
        f"{'order':<37} {'mean τw':>7} {'mean regret':>11} {'worst':>6} {'mean / sd':>9} {'in tied':>8} {'× FT':>6}",
    ]
    for label in labels:
        ms = [baselines[t][label] for t in tasks if label in baselines[t]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            tau = float(np.nanmean([m["wtau"] for m in ms]))
        lines.append(
            f"{label:<37} {f2(tau):>7} {np.mean([m['regret'] for m in ms]):11.3f} "
            f"{max(m['regret'] for m in ms):6.3f} {np.mean([m['regret_sd'] for m in ms]):9.1f} "
            f"{sum(m['in_group'] for m in ms):4.1f}/{len(ms):<3} {np.mean([m['cost'] for m in ms]):6.3f}"
        )
    return lines


def _within_architecture(task: str, gt: dict[str, Any], rows: list[Row], boot: int) -> list[str]:
    """The baselines table restricted to each architecture with ≥ 2 candidates: choosing among weights of one
    architecture (τw / regret in seed s.d. / in tied group; the ceiling is that subset's leave-one-seed-out τw)."""
    import baseline_stats as bs

    cands = gt["candidates"]
    conv = gt["gt"][gt["budgets"][-1]]
    arch_of, _ = zoo_facts()
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(cands):
        groups.setdefault(arch_of.get(c, "?"), []).append(i)
    groups = {a: idx for a, idx in groups.items() if len(idx) >= 2}
    if not groups:
        return []
    lines = [
        f"WITHIN EACH ARCHITECTURE {task} (τw / regret in seed s.d. / pick in the tied group; n/a: no order)",
        f"{'order':<37} " + " ".join(f"{a[:24]:>24}" for a in groups),
    ]
    cells = []
    for idx in groups.values():
        sub = conv[:, idx, :]
        cells.append(f"{f2(qs.ceiling(sub))} ({len(idx)}; sd {bs.seed_sd(sub):.3f})".rjust(24))
    lines.append(f"{'ceiling (n; seed s.d.)':<37} " + " ".join(cells))
    for r in rows:
        cells = []
        for idx in groups.values():
            sub = conv[:, idx, :]
            if r.scores is None:
                m = bs.random_pick(qs.gt_mean(sub), bs.tied_top_group(sub, n=boot))
                m["regret_sd"] = m["regret"] / bs.seed_sd(sub)
            elif r.held_out:
                m = bs.held_out_seed(np.asarray(r.scores)[:, idx], sub, n=boot)
            else:
                sub_scores = [r.scores[i] for i in idx]
                m = bs.measures(sub_scores, sub, bs.tied_top_group(sub, n=boot), bs.seed_sd(sub))
            cells.append(f"{f2(m['wtau'])} / {f2(m['regret_sd'], '.1f')} / {m['in_group']:.2f}".rjust(24))
        lines.append(f"{r.label:<37} " + " ".join(cells))
    return lines


def report_sweep(task: str) -> list[str]:
    gt = read_gt(task)
    if gt is None:
        return []
    ev = evaluate_settings(gt, proxy_settings(task, gt["candidates"]))
    if not ev:
        return []
    lines = [f"SWEEP {task}: every setting, τw vs the converged GT mean (cost × converged fine-tuning)"]
    for k in sorted(ev, key=lambda k: -ev[k]["wtau"] if math.isfinite(ev[k]["wtau"]) else 9):
        lines.append(
            f"  {k:<48} {f2(ev[k]['wtau']):>6}  top1∈top2 {f2(ev[k]['top1_in_top2']):>3}  {ev[k]['cost_ratio']:.3f}×"
        )
    return lines


GAMMA_FEATURES = (
    ("|Δγ| (mean change)", lambda s: (s.get("change") or {}).get("mean_abs_delta")),
    ("γ<.1med (relative share)", lambda s: s.get("share_below_relative")),
    ("γ<0.05 (absolute share)", lambda s: s.get("share_below")),
)
VERIFY_KS = (1, 2, 3)


def gamma_run(task: str, prereg: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The raw BN-only run of the pre-registered lr and options whose γ statistics the γ table reads, and at
    which step they were taken: the pre-registered run itself, or on the tuning task its 200-step sweep run
    (the sweep stored γ at the end of each run only, not at 20 steps)."""
    s = prereg["setting"]
    tag = "".join(f"_{k}-{v}" for k, v in sorted((s.get("extra") or {}).items()))
    for steps in (s["steps"], SWEEP_MAX):
        path = RESULTS / "proxies" / task / f"bnonly_lr{s['lr']:g}_{steps}{tag}.json"
        if path.is_file():
            return load(path), f"after {steps} steps"
    return None, ""


def report_gamma(prereg: dict[str, Any] | None, tasks: Sequence[str], evaluation: Sequence[str]) -> list[str]:
    """Issue 10, item 10: does a γ figure of BN-only training carry information about the fine-tuning outcome?

    Spearman ρ and weighted τ of each figure against the converged ground-truth mean, per task. The sign is
    kept: a negative value means candidates whose γ moved more (or switched off more) fine-tune worse.
    """
    if prereg is None:
        return []
    lines = [
        "γ AFTER BN-ONLY TRAINING vs THE CONVERGED GT MEAN (pre-registered lr and options; Spearman ρ / τw, signed)",
        f"{'task':<12} {'γ read':<16} "
        + " ".join(f"{name:>26}" for name, _ in GAMMA_FEATURES)
        + f" {'BN-only score':>16}",
    ]
    sums: dict[str, list[float]] = {}
    for task in tasks:
        gt = read_gt(task)
        run, when = gamma_run(task, prereg)
        if gt is None or run is None:
            lines.append(f"{task:<12} no ground truth or no BN-only run with γ statistics")
            continue
        cands, mean = gt["candidates"], qs.gt_mean(gt["gt"][gt["budgets"][-1]])
        summaries = [run["entries"][c]["gamma"]["after_bn"]["summary"] for c in cands]
        cells = []
        for name, read in GAMMA_FEATURES:
            values = [read(x) for x in summaries]
            if any(v is None for v in values):
                cells.append(f"{'not stored':>26}")
                continue
            rho, tau = qs.spearman(values, mean), qs.wtau(values, mean)
            if task in evaluation:
                sums.setdefault(name, []).append(rho)
            cells.append(f"{f2(rho, '+.2f')} / {f2(tau, '+.2f')}".rjust(26))
        settings = proxy_settings(task, cands)
        score = settings.get(prereg["setting_id"])
        ref = f"{f2(qs.spearman(score['scores'], mean), '+.2f')} / {f2(qs.wtau(score['scores'], mean), '+.2f')}"
        lines.append(f"{task:<12} {when:<16} " + " ".join(cells) + f" {ref if score else 'n/a':>16}")
    if sums:
        lines.append(
            "mean ρ over the evaluation tasks (out of sample): "
            + "; ".join(
                f"{name} {f2(float(np.nanmean(v)), '+.2f') if any(math.isfinite(x) for x in v) else 'n/a'}"
                for name, v in sums.items()
            )
            + " (n/a: the figure is the same for every candidate)"
        )
    return lines


def report_verify(prereg: dict[str, Any] | None, tasks: Sequence[str]) -> list[str]:
    """How often `--verify K` (one seed, at a budget) would cry wolf on the benchmark.

    Each ground-truth seed at a budget stands for one verify run. It is judged against the converged mean of
    the *other* seeds (held out), so the run's own outcome is not part of the truth it is checked against; the
    in-sample figures (truth over every seed, the run's included) are shown beside them for comparison.
    """
    if prereg is None:
        return []
    lines = [
        "--verify ON THE BENCHMARK (pre-registered ranking; each GT seed at a budget stands for one verify run; "
        "truth: the converged GT mean of the other seeds, and in sample of all seeds)",
        f"{'':<28} {'held out':^38} | {'in sample (verify seed in the truth)':^38}",
        f"{'K':>2} {'budget':>6} {'LOSO τw at budget':>18}"
        + f" {'false alarms':>13} {'misses':>8} {'top-1 false al.':>15} |" * 2,
    ]
    gts, proxies = {}, {}
    for t in tasks:
        g = read_gt(t)
        setting = proxy_settings(t, g["candidates"]).get(prereg["setting_id"]) if g is not None else None
        if setting is not None:
            gts[t], proxies[t] = g, setting["scores"]
    if not gts:
        return [*lines, "  no evaluation task has ground truth and the pre-registered proxy yet"]
    budgets = next(iter(gts.values()))["budgets"]
    keys = ("runs", "right", "false_alarms", "misses", "top1_right", "top1_false_alarms")
    for k in VERIFY_KS:
        for b in budgets:
            totals = {"held out": dict.fromkeys(keys, 0), "in sample": dict.fromkeys(keys, 0)}
            loso = []
            for t, g in gts.items():
                seeds = qs.seed_scores(g["gt"][b])
                converged = qs.seed_scores(g["gt"][budgets[-1]])
                loso.append(float(np.mean(qs.loso(seeds))))
                for name, truth in (("held out", qs.held_out_truths(converged)), ("in sample", converged.mean(0))):
                    for key, v in qs.verify_trials(proxies[t], truth, seeds, k).items():
                        totals[name][key] += v
            row = f"{k:>2} {b:>6} {f2(min(loso))}-{f2(max(loso))}".ljust(28)
            for total in totals.values():
                wrong = total["runs"] - total["right"]
                row += (
                    f" {total['false_alarms']:>6}/{total['right']:<6} {total['misses']:>3}/{wrong:<4}"
                    + f" {total['top1_false_alarms']:>7}/{total['top1_right']:<7} |"
                )
            lines.append(row)
    lines.append(
        f"  over {', '.join(gts)} × {len(next(iter(gts.values()))['seeds'])} seeds; a false alarm: verify says the "
        "order does not hold where the truth says it does (top-1: the same for the first place); a miss: it says "
        f"it holds where it does not; --verify fine-tunes {budgets[-1]} steps, cosine, as this ground truth "
        "(bnrank/engine/verify.py)"
    )
    return lines


def _pool_row(task: str, label: str, gt: dict[str, Any], prereg: dict[str, Any], boot: int) -> tuple[str, dict]:
    """One row of the norm-only pool table: the pre-registered setting against the pool's converged GT."""
    settings = proxy_settings(task, gt["candidates"], extension=True)
    sid = prereg["setting_id"]
    if sid not in settings:
        return f"{task:<12} {label:<14} {len(gt['candidates']):>3}  no pre-registered proxy run for every candidate", {}
    with warnings.catch_warnings():  # a proxy that scores every candidate alike has no τ against single seeds
        warnings.simplefilter("ignore", RuntimeWarning)
        ev = evaluate_settings(gt, settings)
    logme = [k for k in sorted(ev) if ev[k]["setting"]["method"] == "logme"]
    b = qs.bootstrap(gt["gt"][gt["budgets"][-1]], {k: ev[k]["scores"] for k in (sid, *logme)}, n=boot)
    scores = np.asarray(ev[sid]["scores"])
    # A first place shared by several candidates (e.g. all at Dice 0) names no top-1: argmax would pick by name.
    top1 = "tied" if int(np.sum(scores == scores.max())) > 1 else f2(ev[sid]["top1_in_top2"])
    row = (
        f"{task:<12} {label:<14} {len(gt['candidates']):>3} {len(gt['seeds']):>5} "
        f"{f2(b[sid]['value']):>6} [{f2(b[sid]['lo'])}, {f2(b[sid]['hi'])}]".ljust(54)
        + f" {f2(b['ceiling']['value']):>5} [{f2(b['ceiling']['lo'])}, {f2(b['ceiling']['hi'])}]".ljust(21)
        + f" {' / '.join(f2(b[k]['value']) for k in logme) or 'n/a':>13}"
        + f" {top1:>9} {ev[sid]['cost_ratio']:7.3f}×"
    )
    return row, {"ev": ev[sid], "wtau": b[sid]["value"], "ceiling": b["ceiling"]["value"]}


def report_extension(prereg: dict[str, Any] | None, tasks: Sequence[str], boot: int) -> list[str]:
    """Issue 11, item 5: the norm-only extension pool (nnU-Net PlainConvUNet candidates, InstanceNorm) ranked by
    norm-only evaluation at the pre-registered setting beside the 12 pre-registered (BatchNorm) candidates.

    Not part of the pre-registered result: those tables stay over their 12 candidates (``read_gt``'s default).
    Here: the pooled candidates, and the extension candidates alone where there are at least 3, each against
    the converged ground truth of exactly those candidates (its own ceiling), with LogME beside it.
    """
    extension = extension_candidates()
    if prereg is None or not extension:
        return []
    headline = sorted(headline_candidates() or ())
    lines = [
        f"NORM-ONLY POOL (issue 11): the {len(headline)} pre-registered candidates + {len(extension)} nnU-Net "
        f"candidates ({', '.join(extension)}), pre-registered setting, not re-tuned; out of sample",
        f"{'task':<12} {'pool':<14} {'n':>3} {'seeds':>5} {'norm-only τw [95% CI]':>24}".ljust(54)
        + f" {'ceiling [95% CI]':<20} {'LogME b4 / b8':>13} {'top1∈top2':>9} {'× FT':>8}",
    ]
    details: list[str] = []
    for task in tasks:
        pooled = f"{len(headline)} + nnU-Net"
        pools = [(pooled, [*headline, *extension])]
        if len(extension) >= 3:
            pools.append(("nnU-Net only", extension))
        for label, names in pools:
            gt = read_gt(task, names)
            if gt is None or set(gt["candidates"]) != set(names):
                lines.append(f"{task:<12} {label:<14} {len(names):>3}  ground truth not complete for these candidates")
                continue
            row, got = _pool_row(task, label, gt, prereg, boot)
            lines.append(row)
            if label != pooled or not got:
                continue
            # Where each nnU-Net candidate lands in the pooled order, by fine-tuning and by the proxy.
            cands, scores = gt["candidates"], got["ev"]["scores"]
            mean = qs.gt_mean(gt["gt"][gt["budgets"][-1]])
            gt_rank = {cands[i]: r + 1 for r, i in enumerate(np.argsort(-mean))}
            values = np.asarray(scores)
            # competition ranks; "=" marks a place shared with another candidate (their order is arbitrary)
            proxy_rank = {
                c: f"{1 + int(np.sum(values > v)):>2}" + ("=" if int(np.sum(values == v)) > 1 else "")
                for c, v in zip(cands, values, strict=True)
            }
            seeds = qs.seed_scores(gt["gt"][gt["budgets"][-1]])
            for c in extension:
                i = cands.index(c)
                details.append(
                    f"  {task:<12} {c:<20} GT {mean[i]:.3f} ± {seeds[:, i].std():.3f} (#{gt_rank[c]:>2} of "
                    f"{len(cands)}), norm-only score {scores[i]:.3f} (#{proxy_rank[c]})"
                )
            best = cands[int(np.argmax(mean))]
            details.append(f"  {task:<12} pooled GT top-1 {best}, norm-only top-1 {cands[int(np.argmax(scores))]}")
    trained = _extension_trained(tasks, extension)
    head = "per nnU-Net candidate (converged GT mean ± sd over seeds; rank in the pooled order):"
    return [*lines, head, *details, *trained]


def _extension_trained(tasks: Sequence[str], extension: Sequence[str]) -> list[str]:
    """What norm-only evaluation trained in the extension candidates (from the raw proxy runs)."""
    for task in tasks:
        for path in sorted(proxy_dir(task, True).glob("bnonly_*.json")):
            e = load(path)["entries"]
            shown = [
                f"{c}: {', '.join(e[c].get('norm_kinds') or [])} ({e[c].get('trained_parameters')} parameters, "
                f"loaded as {e[c].get('format')})"
                for c in extension
                if c in e and e[c].get("norm_kinds")
            ]
            if shown:
                return ["trained by norm-only evaluation: " + "; ".join(shown)]
    return []


def task_names() -> tuple[str, tuple[str, ...]]:
    """The tuning task and the evaluation tasks, from tasks.json (no torch import: the report stays fast)."""
    path = RESULTS / "tasks.json"
    if path.is_file():
        tasks = load(path)
        return next(t for t, v in tasks.items() if not v["evaluation"]), tuple(
            t for t, v in tasks.items() if v["evaluation"]
        )
    import zoo as Z

    return Z.TUNING_TASK, tuple(Z.EVALUATION_TASKS)


def report(boot: int = 1000, sweep: bool = False) -> str:
    tuning, evaluation = task_names()
    prereg = load(PREREGISTRATION) if PREREGISTRATION.is_file() else None
    out = [*report_zoo(), "", *report_curve(), ""]
    out.append(f"PRE-REGISTRATION: {prereg['setting_id'] if prereg else 'none yet (--tune)'}")
    out.append("")
    summary: dict[str, dict[str, Any]] = {}
    baselines: dict[str, dict[str, dict[str, float]]] = {}
    for task in (tuning, *evaluation):
        out += [*report_task(task, prereg, boot, summary if task != tuning else None), ""]
        out += [*report_baselines(task, prereg, boot, baselines if task != tuning else None), ""]
        noise = report_proxy_noise(task, prereg, boot)
        out += [*noise, ""] if noise else []
        if sweep or task == tuning:
            out += [*report_sweep(task), ""]
    out += [*report_gamma(prereg, (tuning, *evaluation), evaluation), ""]
    out += [*report_baselines_summary(baselines), ""]
    out += [*report_verify(prereg, evaluation), ""]
    extension = report_extension(prereg, evaluation, boot)
    out += [*extension, ""] if extension else []
    return "\n".join(out + report_targets(summary, evaluation))


def report_targets(summary: dict[str, dict[str, Any]], tasks: Sequence[str]) -> list[str]:
    """Issue 10's targets on the evaluation tasks, with the pre-registered setting: met, or by how much not."""
    lines = ["TARGETS (evaluation tasks, pre-registered setting; out of sample)"]
    if not summary:
        return [*lines, "  no evaluation task has both ground truth and the pre-registered proxy yet"]
    for t in tasks:
        if t not in summary:
            lines.append(f"  {t}: not yet")
            continue
        m = summary[t]
        gap = m["wtau"] - m["ceiling"]
        verdict = "met" if gap >= 0 else f"missed by {-gap:.2f}"
        lines.append(
            f"  {t}: τw {f2(m['wtau'])} vs ceiling {f2(m['ceiling'])} ({verdict}); "
            f"top-1 in GT top 2: {f2(m['top1_in_top2'])}; cost {m['cost_ratio']:.3f}× "
            f"({'met' if m['cost_ratio'] <= COST_TARGET else 'missed'}, target {COST_TARGET:g}×)"
        )
    gains = [summary[t]["wtau"] - summary[t]["logme"] for t in summary]
    if gains and all(math.isfinite(g) for g in gains):
        mean_gain = float(np.mean(gains))
        verdict = "met" if mean_gain >= 0.1 else f"missed by {0.1 - mean_gain:.2f}"
        lines.append(f"  mean τw over LogME: {mean_gain:+.2f} (target +0.10: {verdict}; over {len(gains)} tasks)")
    return lines


def main(argv: list[str] | None = None) -> int:
    global PROXY_SEED
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--zoo", action="store_true", help="build (or reuse) the zoo and tasks; write zoo.json, tasks.json")
    g.add_argument("--learning-curve", action="store_true", help="fine-tuning budgets on the tuning task")
    g.add_argument("--ground-truth", metavar="TASK", help="fine-tune every candidate × seed (resumable)")
    g.add_argument("--proxies", metavar="TASK", help="run the proxies (tuning: the sweep; else: pre-registered)")
    g.add_argument("--tune", action="store_true", help="pick the proxy setting on the tuning task; write the file")
    g.add_argument("--report", action="store_true", help="every table from bench/results, no training")
    g.add_argument("--params", action="store_true", help="write results/params.json (parameter counts, no training)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"zoo and task cache ({DEFAULT_CACHE})")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--proxy-seed",
        type=int,
        default=PROXY_SEED,
        help="--proxies: run at this proxy seed (not 0: into proxies/<task>/seed<k>/, for the proxy-noise lines; "
        "never a ground-truth seed)",
    )
    p.add_argument(
        "--only",
        nargs="*",
        default=(),
        help="--ground-truth / --zoo: only these candidates; --proxies: the norm-only extension pool's "
        "candidates (nnunet_*), into proxies/<task>/extension/",
    )
    p.add_argument(
        "--proxy-option",
        nargs="*",
        default=(),
        metavar="KEY=VALUE",
        help="extra TrainConfig options for BN-only (as the engine gains them), JSON values",
    )
    p.add_argument(
        "--allow-uncommitted",
        action="store_true",
        help="--ground-truth: accept a pre-registration that is not committed (trial runs only)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="--report: bootstrap draws")
    p.add_argument("--sweep", action="store_true", help="--report: every setting of every task")
    args = p.parse_args(argv)
    if args.report:
        print(report(args.bootstrap, args.sweep))
        return 0
    if args.tune:
        run_tune()
        return 0
    if args.params:
        run_params()
        return 0
    from bnrank.engine.threads import configure_threads

    threads = configure_threads(threads=args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.zoo:
        prepare(args.cache, args.only)
    elif args.learning_curve:
        run_learning_curve(args.cache, threads)
    elif args.ground_truth:
        run_ground_truth(args.ground_truth, args.cache, threads, args.only, args.allow_uncommitted)
    elif args.proxies:
        extra = {}
        for item in args.proxy_option:
            key, _, value = item.partition("=")
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
            extra[key] = value
        if args.proxy_seed in GT.seeds:
            raise SystemExit(f"proxy seed {args.proxy_seed} is a ground-truth seed {GT.seeds}")
        PROXY_SEED = args.proxy_seed
        run_proxies(args.proxies, args.cache, extra, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
