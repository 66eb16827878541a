"""Baselines, cascades and top-1 regret for the ranking-quality benchmark: pure statistics, tested in tests/bench.

A ranking is worth its cost only against what a user could do without it: order by architecture, by size,
at random, by LogME, or fine-tune briefly. These functions turn the committed raw results into such
orders and into the measures a user cares about: how much Dice the pick loses against the true best
(top-1 regret, also in units of the ground truth's seed-to-seed s.d.) and whether the pick is one the ground
truth cannot tell apart from the best (its statistically tied top group).

Conventions as in ``quality_stats``: ``gt`` is [seeds, candidates, test cases] of per-case Dice; scores are
one per candidate, higher = better.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import quality_stats as qs

TIE_ALPHA = 0.05  # a candidate is tied with the best unless the best beats it in ≥ 95 % of paired draws


def picks(scores: Sequence[float]) -> list[int]:
    """Every candidate sharing the first place of ``scores``: a proxy that ties at the top names no single pick,
    so its pick is taken as uniform among them (e.g. all candidates at Dice 0)."""
    s = np.asarray(scores, float)
    return [int(i) for i in np.flatnonzero(s == s.max())]


def regret(scores: Sequence[float], truth: Sequence[float]) -> float:
    """Top-1 regret: the truth's best minus the truth of the pick (expected over a tied first place)."""
    t = np.asarray(truth, float)
    return float(t.max() - t[picks(scores)].mean())


def topk_regret(scores: Sequence[float], truth: Sequence[float], k: int, draws: int = 200, seed: int = 0) -> float:
    """What a user loses who fine-tunes the first ``k`` of a ranking and keeps the best: the truth's best minus the
    best truth among them, expected over random orders of the candidates that tie at the cut (a family prior ties
    a whole family)."""
    s, t = np.asarray(scores, float), np.asarray(truth, float)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(draws if len(np.unique(s)) < len(s) else 1):
        order = np.lexsort((rng.random(len(s)), -s))  # by score, ties in random order
        losses.append(t.max() - t[order[:k]].max())
    return float(np.mean(losses))


def seed_sd(gt: np.ndarray) -> float:
    """The ground truth's seed-to-seed s.d. of a candidate's score, pooled over candidates (root mean variance)."""
    s = qs.seed_scores(gt)
    if s.shape[0] < 2:
        return float("nan")
    return float(np.sqrt(np.mean(np.var(s, axis=0, ddof=1))))


_TIED: dict[tuple[bytes, tuple[int, ...], int, int, float], list[int]] = {}


def tied_top_group(gt: np.ndarray, n: int = 1000, seed: int = 0, alpha: float = TIE_ALPHA) -> list[int]:
    """The candidates the ground truth cannot separate from its best: a paired bootstrap over seeds and test
    cases (every candidate sees the same draw), one-sided; c is tied unless best − c > 0 in ≥ 1 − alpha of
    the draws. The best itself is always in the group. Memoised: the report asks for the same subsets often."""
    key = (np.ascontiguousarray(gt).tobytes(), gt.shape, n, seed, alpha)
    if key not in _TIED:
        _TIED[key] = _tied_top_group(gt, n, seed, alpha)
    return list(_TIED[key])


def _tied_top_group(gt: np.ndarray, n: int, seed: int, alpha: float) -> list[int]:
    s = qs.seed_scores(gt)
    best = int(np.argmax(s.mean(axis=0)))
    rng = np.random.default_rng(seed)
    wins = np.zeros(gt.shape[1])
    for _ in range(n):
        seeds = rng.integers(0, gt.shape[0], gt.shape[0])
        cases = rng.integers(0, gt.shape[2], gt.shape[2])
        m = qs.seed_scores(gt[seeds][:, :, cases]).mean(axis=0)
        wins += m[best] - m > 0
    return [i for i in range(gt.shape[1]) if i == best or wins[i] / n < 1 - alpha]


def in_group(scores: Sequence[float], group: Sequence[int]) -> float:
    """Probability that the pick lies in ``group`` (1 or 0 for a single pick; a share for a tied first place)."""
    p = picks(scores)
    return sum(i in set(group) for i in p) / len(p)


def random_pick(truth: Sequence[float], group: Sequence[int], draws: int = 2000, seed: int = 0) -> dict[str, float]:
    """The expected value of picking (and ordering) at random: regret, share in the tied group, and τw by
    Monte Carlo over permutations (its expectation is near 0 but not exactly, the weights being asymmetric)."""
    t = np.asarray(truth, float)
    rng = np.random.default_rng(seed)
    taus = [qs.wtau(rng.permutation(len(t)).astype(float), t) for _ in range(draws)]
    return {
        "wtau": float(np.nanmean(taus)),
        "regret": float(t.max() - t.mean()),
        "in_group": len(group) / len(t),
    }


def architecture_prior(tuning: Mapping[str, float], arch_of: Mapping[str, str], cands: Sequence[str]) -> list[float]:
    """Data-free prior: each candidate scored by its architecture's mean converged Dice on the tuning task.

    ``tuning`` maps tuning-task candidates to their ground-truth mean; an architecture the tuning task never
    saw scores below every one it did."""
    by_arch: dict[str, list[float]] = {}
    for c, v in tuning.items():
        by_arch.setdefault(arch_of[c], []).append(v)
    means = {a: float(np.mean(v)) for a, v in by_arch.items()}
    floor = min(means.values(), default=0.0) - 1.0
    return [means.get(arch_of[c], floor) for c in cands]


def lexicographic(*keys: Sequence[float]) -> list[float]:
    """One score vector ordering candidates by the first key, ties broken by the next, and so on."""
    n = len(keys[0])
    ranks = np.zeros(n)
    for key in keys:
        values = np.asarray(key, float)
        dense = np.unique(values, return_inverse=True)[1]  # 0 = lowest
        ranks = ranks * (n + 1) + dense
    return ranks.astype(float).tolist()


def race(base: Sequence[float], members: Sequence[int], race_scores: Sequence[float]) -> list[float]:
    """A cascade's final order: the ``members`` of a second stage first, ordered by ``race_scores``; every
    other candidate after them in the order of ``base``."""
    inside = np.zeros(len(base))
    inside[list(members)] = 1
    return lexicographic(inside, np.where(inside == 1, np.asarray(race_scores, float), 0.0), base)


def leaders(scores: Sequence[float], arch_of: Sequence[str]) -> list[int]:
    """The best-scored candidate of every architecture (the first of them on a tie)."""
    best: dict[str, int] = {}
    for i, (s, a) in enumerate(zip(scores, arch_of, strict=True)):
        if a not in best or s > scores[best[a]]:
            best[a] = i
    return sorted(best.values())


def top_k(scores: Sequence[float], k: int) -> list[int]:
    return [int(i) for i in np.argsort(-np.asarray(scores, float), kind="stable")[:k]]


def measures(scores: Sequence[float], gt: np.ndarray, group: Sequence[int], sd: float) -> dict[str, float]:
    """τw against the GT mean, top-1 regret (Dice and in seed s.d.), and the pick's share in the tied group."""
    truth = qs.gt_mean(gt)
    r = regret(scores, truth)
    return {
        "wtau": qs.wtau(scores, truth),
        "regret": r,
        "regret_sd": r / sd if sd > 0 and math.isfinite(sd) else float("nan"),
        "in_group": in_group(scores, group),
    }


def held_out_seed(
    score_of_seed: np.ndarray, gt: np.ndarray, n: int = 1000, exclude: Sequence[Sequence[int]] | None = None
) -> dict[str, float]:
    """Measures of a proxy made from one ground-truth seed's own run (e.g. its short-budget point), each seed
    judged against the truth of the *other* seeds, then averaged: the proxy never sees its own seed's outcome.

    ``score_of_seed`` is [seeds, candidates]; returns the means, and the range of τw over the seeds."""
    rows = []
    for s in range(gt.shape[0]):
        rest = np.delete(gt, s, axis=0)
        rows.append(measures(score_of_seed[s], rest, tied_top_group(rest, n=n), seed_sd(rest)))
    with warnings.catch_warnings():  # a seed whose order is constant has no τ: skipped
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    taus = [r["wtau"] for r in rows if math.isfinite(r["wtau"])]
    out["wtau_lo"], out["wtau_hi"] = (min(taus), max(taus)) if taus else (float("nan"), float("nan"))
    return out


def bootstrap_proxy_seeds(
    gt: np.ndarray, proxy: np.ndarray, n: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """τw and top-1 regret of a proxy run at several seeds, with 95 % intervals over ground-truth seeds, proxy
    seeds and test cases together (each draw resamples all three with replacement; the proxy is the mean of
    the drawn proxy seeds' scores). ``proxy`` is [proxy seeds, candidates].

    Also the proxy's own seed-to-seed agreement (mean τw of each proxy seed against the mean of the others):
    the noise floor of the proxy, which one proxy seed cannot show."""
    p = np.asarray(proxy, float)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"wtau": [], "regret": []}
    for _ in range(n):
        seeds = rng.integers(0, gt.shape[0], gt.shape[0])
        cases = rng.integers(0, gt.shape[2], gt.shape[2])
        rows = rng.integers(0, len(p), len(p))
        truth = qs.gt_mean(gt[seeds][:, :, cases])
        scores = p[rows].mean(axis=0)
        draws["wtau"].append(qs.wtau(scores, truth))
        draws["regret"].append(regret(scores, truth))
    truth, scores = qs.gt_mean(gt), p.mean(axis=0)
    point = {"wtau": qs.wtau(scores, truth), "regret": regret(scores, truth)}
    out = {}
    for k, values in draws.items():
        v = np.asarray([x for x in values if math.isfinite(x)])
        lo, hi = np.percentile(v, [2.5, 97.5]) if v.size else (float("nan"), float("nan"))
        out[k] = {"value": float(point[k]), "lo": float(lo), "hi": float(hi)}
    agree = [t for t in qs.loso(p) if math.isfinite(t)] if len(p) > 1 else []
    out["self_agreement"] = {"value": float(np.mean(agree)) if agree else float("nan")}
    return out
