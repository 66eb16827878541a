"""Pure statistics of the ranking-quality benchmark: no training, no files; tested in tests/bench.

Conventions. ``gt`` is an array [seeds, candidates, test cases] of per-case Dice (the mean over the
foreground classes present in that case) at one fine-tuning budget; a candidate's ground truth is its mean
over seeds and cases. A proxy is a vector of scores, one per candidate, higher = better.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import ConstantInputWarning, kendalltau, spearmanr, weightedtau


def wtau(a: Sequence[float], b: Sequence[float]) -> float:
    """Weighted Kendall τ with hyperbolic weights (scipy's default), averaged over ranking by a and by b.

    NaN when either order is constant (every candidate tied): such a proxy has no order to judge.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float(weightedtau(a, b).statistic)


def ktau(a: Sequence[float], b: Sequence[float]) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(kendalltau(a, b).statistic)


def failed_last(scores: Sequence[float | None]) -> list[float]:
    """Scores with failed candidates (None) placed below every scored one, as a ranking lists them."""
    ok = [float(x) for x in scores if x is not None and math.isfinite(x)]
    floor = (min(ok) if ok else 0.0) - 1.0
    return [float(x) if x is not None and math.isfinite(x) else floor for x in scores]


def top1_in_top(proxy: Sequence[float], truth: Sequence[float], k: int = 2) -> bool:
    """Whether the proxy's best candidate is among the ``k`` best of the truth."""
    best = int(np.argmax(proxy))
    return best in set(np.argsort(-np.asarray(truth, float), kind="stable")[:k].tolist())


def seed_scores(gt: np.ndarray) -> np.ndarray:
    """[seeds, candidates]: each seed's score per candidate (mean over test cases, NaN cases skipped)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(gt, axis=2)


def gt_mean(gt: np.ndarray) -> np.ndarray:
    return seed_scores(gt).mean(axis=0)


def loso(scores: np.ndarray) -> list[float]:
    """Leave-one-seed-out agreement: weighted τ of each seed's order against the mean of the other seeds."""
    s = np.asarray(scores, float)
    if len(s) < 2:
        return []
    out = []
    for i in range(len(s)):
        others = np.delete(s, i, axis=0).mean(axis=0)
        out.append(wtau(s[i], others))
    return out


def ceiling(gt: np.ndarray) -> float:
    """The noise ceiling: mean leave-one-seed-out weighted τ (NaN seeds skipped)."""
    values = [v for v in loso(seed_scores(gt)) if math.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _resample(gt: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bootstrap draw over seeds and test cases (with replacement); returns the draw and its seed indices."""
    seeds = rng.integers(0, gt.shape[0], gt.shape[0])
    cases = rng.integers(0, gt.shape[2], gt.shape[2])
    return gt[seeds][:, :, cases], seeds


def bootstrap(
    gt: np.ndarray,
    proxies: Mapping[str, Sequence[float]],
    n: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Point value and 95 % percentile interval over seeds and test cases, for the ceiling and each proxy.

    Each draw resamples the seeds and the test cases with replacement. A proxy's value is its weighted τ
    against the draw's GT mean. The ceiling's is the mean over drawn seeds of τ against the mean of the
    draws from *other* seeds (a seed drawn twice is never compared with itself).
    """
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"ceiling": [], **{k: [] for k in proxies}}
    for _ in range(n):
        g, seeds = _resample(gt, rng)
        s = seed_scores(g)
        mean = s.mean(axis=0)
        for name, p in proxies.items():
            draws[name].append(wtau(p, mean))
        taus = []
        for i in range(len(s)):
            other = seeds != seeds[i]
            if other.any():
                taus.append(wtau(s[i], s[other].mean(axis=0)))
        finite = [t for t in taus if math.isfinite(t)]
        draws["ceiling"].append(float(np.mean(finite)) if finite else float("nan"))
    point = {"ceiling": ceiling(gt), **{k: wtau(p, gt_mean(gt)) for k, p in proxies.items()}}
    out = {}
    for name, values in draws.items():
        v = np.asarray([x for x in values if math.isfinite(x)])
        lo, hi = np.percentile(v, [2.5, 97.5]) if v.size else (float("nan"), float("nan"))
        out[name] = {"value": float(point[name]), "lo": float(lo), "hi": float(hi)}
    return out


# ------------------------------------------------------------------------------------------ proxy curves


def windowed(curve: Sequence[Mapping[str, float]], upto: int, key: str = "dice", window: int = 3) -> float:
    """Mean of the last ``window`` validations up to step ``upto`` (the engine's score), 0 if none."""
    points = [p[key] for p in curve if p["step"] <= upto and p.get(key) is not None]
    return float(np.mean(points[-window:])) if points else 0.0


def seconds_at(curve: Sequence[Mapping[str, float]], upto: int) -> float:
    """The run's clock at its last validation up to step ``upto``."""
    points = [p["seconds"] for p in curve if p["step"] <= upto]
    return float(points[-1]) if points else 0.0


PAUSED = 4.0
"""A stretch between two validations this many times the run's median is read as a stopped process (SIGSTOP)."""


def stretches(curve: Sequence[Mapping[str, float]]) -> list[float]:
    """Wall seconds from the run's start to its first validation, then between consecutive validations."""
    clock = [float(p["seconds"]) for p in curve]
    return [clock[0], *np.diff(clock).tolist()] if clock else []


def paused_stretches(curve: Sequence[Mapping[str, float]]) -> list[tuple[int, float]]:
    """(step a stretch ends at, its wall seconds) for each stretch :func:`cpu_at` reads as a stopped process."""
    spans = stretches(curve)
    if not spans:
        return []
    typical = float(np.median(spans))
    return [(int(curve[i]["step"]), x) for i, x in enumerate(spans) if x > PAUSED * typical]


def cpu_at(entry: Mapping[str, object], upto: int) -> float:
    """CPU seconds of a run up to its last validation at or before step ``upto``: its measured CPU total, shared
    over the stretches between validations (and the tail after the last) in proportion to their wall time.

    A stretch longer than ``PAUSED`` × the median is counted as the median: a process stopped during the run
    (paused for CI) spent wall time there but no CPU, and a plain wall-time share would hand that stretch most of
    the run's CPU."""
    curve: Sequence[Mapping[str, float]] = entry["curve"]  # type: ignore[assignment]
    wall = float(entry["wall_seconds"])  # type: ignore[arg-type]
    cpu = float(entry.get("cpu_seconds", wall * float(entry.get("cpu_per_wall", 1.0))))  # type: ignore[arg-type]
    spans = [*stretches(curve), max(wall - float(curve[-1]["seconds"]), 0.0)]
    typical = float(np.median(spans[:-1]))
    spans = [min(x, typical) if x > PAUSED * typical else x for x in spans]
    done = sum(spans[i] for i, p in enumerate(curve) if p["step"] <= upto) + spans[-1]
    return cpu * done / sum(spans) if sum(spans) > 0 else 0.0


def prefix_setting(
    curves: Mapping[str, Sequence[Mapping[str, float]]],
    overhead: Mapping[str, float],
    steps: int,
    key: str = "dice",
    window: int = 3,
    scale: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], float]:
    """Scores and total seconds of the ``steps``-step run, read off longer runs (no budget-dependent schedule).

    ``scale`` (per candidate) turns the curve's wall clock into CPU seconds (the run's CPU / wall ratio).
    """
    scale = scale or {}
    scores = {c: windowed(curve, steps, key, window) for c, curve in curves.items()}
    seconds = sum((seconds_at(curve, steps) + overhead.get(c, 0.0)) * scale.get(c, 1.0) for c, curve in curves.items())
    return scores, seconds


def halving(
    curves: Mapping[str, Sequence[Mapping[str, float]]],
    overhead: Mapping[str, float],
    first: int,
    max_steps: int,
    key: str = "dice",
    window: int = 3,
    scale: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], float, dict[str, int]]:
    """Successive halving read off full-length runs: every candidate gets ``first`` steps, the better half
    twice as many, and so on up to ``max_steps`` (identical schedules per round, so a round is a prefix).

    Returns a score per candidate that orders by (last round reached, score in that round), the total
    seconds actually spent, and the round in which each candidate stopped (1-based).
    """
    alive = list(curves)
    budget, rnd = first, 1
    stopped: dict[str, int] = {}
    last_score: dict[str, float] = {}
    spent: dict[str, int] = {}
    while True:
        for c in alive:
            last_score[c] = windowed(curves[c], budget, key, window)
            spent[c] = budget
        if len(alive) <= 1 or budget * 2 > max_steps:
            for c in alive:
                stopped[c] = rnd
            break
        ranked = sorted(alive, key=lambda c: -last_score[c])
        keep = ranked[: math.ceil(len(ranked) / 2)]
        for c in ranked[len(keep) :]:
            stopped[c] = rnd
        alive, budget, rnd = keep, budget * 2, rnd + 1
    scores = {c: stopped[c] + min(max(last_score[c], 0.0), 1.0) * 0.999 for c in curves}
    scale = scale or {}
    seconds = sum((seconds_at(curves[c], spent[c]) + overhead.get(c, 0.0)) * scale.get(c, 1.0) for c in curves)
    return scores, seconds, stopped


def setting_id(setting: Mapping[str, object]) -> str:
    """A short readable name of a proxy setting, the key of the tables and the pre-registration."""
    if setting["method"] == "logme":
        return f"logme b{setting['batches']}"
    base = f"bnonly lr {setting['lr']:g} {setting['steps']} st {setting['score']}"
    base += f" halving r{setting['halving']}" if setting.get("halving") else ""
    extra = setting.get("extra") or {}
    return base + "".join(f" {k}={v}" for k, v in sorted(extra.items()))


def engine_options(setting: Mapping[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """A BN-only proxy setting as the engine's options: (TrainConfig fields, RankConfig fields).

    The score names the curve key and the window it was read with ("dice1": hard Dice, the last validation);
    the run's own options (``extra``: validation, the score it was configured with) come first and the read-off
    score overrides the configured one, since that is the number the setting ranked by. Halving, where a
    setting has it, starts at ``halving`` steps and doubles up to ``steps``.
    """
    if setting["method"] != "bnonly":
        raise ValueError(f"{setting['method']} is not a BN-only setting")
    score = str(setting["score"])
    name = score.rstrip("0123456789")
    train: dict[str, object] = {
        **dict(setting.get("extra") or {}),  # type: ignore[call-overload]
        "lr": setting["lr"],
        "max_steps": setting["steps"],
        "score": name,
        "score_window": int(score[len(name) :]),
    }
    first = setting.get("halving")
    rounds = 1 if not first else int(math.log2(int(setting["steps"]) // int(first))) + 1  # type: ignore[call-overload]
    return train, {"halving_rounds": rounds, "halving_eta": 2}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman ρ; NaN when either side is constant (e.g. a γ share that reads 0 for every candidate)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _concordant(proxy: np.ndarray, truth: np.ndarray, idx: Sequence[int]) -> bool:
    return all((proxy[i] - proxy[j]) * (truth[i] - truth[j]) > 0 for n, i in enumerate(idx) for j in idx[n + 1 :])


def held_out_truths(scores: np.ndarray) -> np.ndarray:
    """[seeds, candidates]: row s is the mean of every *other* seed's scores, the truth a verify run of seed s
    is judged against when its own outcome must not be part of the truth."""
    s = np.asarray(scores, float)
    return (s.sum(axis=0)[None, :] - s) / (len(s) - 1)


def verify_trials(
    proxy: Sequence[float], truth: Sequence[float] | np.ndarray, seeds: np.ndarray, k: int
) -> dict[str, int]:
    """What ``bnrank rank --verify k`` would have said on a benchmark task, once per ground-truth seed.

    Verify fine-tunes the proxy's top ``k`` and its bottom candidate with one seed and says the order "agrees"
    when every pair of them keeps the proxy's order, and "same top-1" when the proxy's first is the best of
    them. Each seed's row of ``seeds`` ([seeds, candidates], at verify's budget) stands for one such run;
    ``truth`` says whether the proxy's order of those candidates is in fact right: one vector (the converged
    mean over seeds) for every run, or one row per run (e.g. :func:`held_out_truths`, so that the run's own
    seed is not part of the truth it is judged by). A false alarm is a "no" where the truth agrees; a miss a
    "yes" where it does not.
    """
    p = np.asarray(proxy, float)
    rows = np.asarray(seeds, float)
    t_all = np.asarray(truth, float)
    if t_all.ndim == 1:
        t_all = np.repeat(t_all[None, :], len(rows), axis=0)
    order = [int(i) for i in np.argsort(-p, kind="stable")]
    idx = order[:k] + ([order[-1]] if len(order) > k else [])
    out = dict.fromkeys(("runs", "right", "false_alarms", "misses", "top1_right", "top1_false_alarms"), 0)
    for row, t in zip(rows, t_all, strict=True):
        right = _concordant(p, t, idx)
        top_right = idx[int(np.argmax(t[idx]))] == order[0]
        says = _concordant(p, row, idx)
        out["runs"] += 1
        out["right"] += right
        out["false_alarms"] += right and not says
        out["misses"] += (not right) and says
        out["top1_right"] += top_right
        out["top1_false_alarms"] += top_right and idx[int(np.argmax(row[idx]))] != order[0]
    return out
