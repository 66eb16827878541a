"""Tie guidance: which ranked candidates cannot be told apart at the ranking's budget (a paired bootstrap).

Kept apart from the evaluation (ranking.py) because it is pure statistics over finished entries: `bnrank rank`
and the service's close-out both reach it through `ranking.close_ranking`, with the ranking's own seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bnrank.engine.training.validation import point_value

if TYPE_CHECKING:
    from bnrank.engine.entries import RankEntry


def _score_matrices(members: Sequence[RankEntry], window: int) -> np.ndarray:
    """[candidates, validations, cases] of scores; from the last validations' curve points where cases are missing."""
    shapes = {np.shape(e.case_scores) for e in members}
    if len(shapes) == 1 and all(e.case_scores for e in members) and len(next(iter(shapes))) == 2:
        return np.array([[[np.nan if v is None else v for v in row] for row in e.case_scores] for e in members], float)
    points = [[v for p in e.curve if (v := point_value(p)) is not None][-window:] for e in members]
    w = max(1, min(len(p) for p in points))
    return np.array([[[v] for v in (p[-w:] or [e.score or 0.0])] for p, e in zip(points, members, strict=True)], float)


def _bootstrap(mats: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[resamples, candidates] means over one paired resample of validations and cases (the same for everyone)."""
    _, w, u = mats.shape
    out = np.empty((resamples, mats.shape[0]))
    for start in range(0, resamples, 100):
        b = min(100, resamples - start)
        pts, cases = rng.integers(w, size=(b, w)), rng.integers(u, size=(b, u))
        sub = mats[:, pts[:, :, None], cases[:, None, :]]  # [n, b, w, u]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[start : start + b] = np.nanmean(sub, axis=(2, 3)).T
    return np.where(np.isfinite(out), out, -np.inf)


def tie_guidance(
    entries: Sequence[RankEntry], resamples: int = 1000, confidence: float = 0.9, window: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Which ranked candidates cannot be told apart at this budget; fills ``tied_with``, ``tie_group``, ``p_best``.

    A paired bootstrap: each resample draws the validation cases (or fixed patches) and the validations behind the
    score with replacement, the same draw for every candidate, and averages each candidate's per-case scores over
    it. Two candidates are tied unless one is ahead in at least ``confidence`` of the resamples. Groups follow the
    order: an entry joins the current group when it is tied with the group's first entry. Under successive halving
    only candidates stopped in the same round (scored at the same budget) are compared. Entries without per-case
    scores (e.g. read back from a store) fall back to the spread of their last ``window`` validations.
    """
    ranked = [e for e in entries if e.rank is not None]
    ranked.sort(key=lambda e: e.rank or 0)
    for e in entries:
        e.tied_with, e.tie_group, e.p_best = [], None, None
    summary: dict[str, Any] = {
        "method": "paired bootstrap over validation cases and the validations behind the score",
        "resamples": resamples,
        "confidence": confidence,
        "p_top_is_best": None,
        "top_group": [],
        "groups": [],
    }
    if not resamples or not ranked:
        return summary
    rng = np.random.default_rng(seed)
    rounds: dict[int, list[RankEntry]] = {}
    for e in ranked:
        rounds.setdefault(e.halving_round or 0, []).append(e)
    group = 0
    for members in rounds.values():
        stats = _bootstrap(_score_matrices(members, window), resamples, rng)
        ahead = (stats[:, :, None] > stats[:, None, :]).mean(0) + 0.5 * (stats[:, :, None] == stats[:, None, :]).mean(0)
        tied = np.maximum(ahead, ahead.T) < confidence
        np.fill_diagonal(tied, False)
        best = stats == stats.max(1, keepdims=True)
        p_best = (best / best.sum(1, keepdims=True)).mean(0)
        leader = -1
        for i, e in enumerate(members):
            e.tied_with = [m.checkpoint for j, m in enumerate(members) if tied[i, j]]
            e.p_best = round(float(p_best[i]), 4)
            if leader < 0 or not tied[leader, i]:
                group, leader = group + 1, i
                summary["groups"].append([])
            e.tie_group = group
            summary["groups"][-1].append(e.checkpoint)
    summary["p_top_is_best"] = ranked[0].p_best
    summary["top_group"] = summary["groups"][0]
    return summary

