"""Whether a leader stands apart: a bootstrap over validation cases *and* seeds, not cases alone.

Tie guidance (ties.py) resamples the validation cases behind one run per candidate, so it holds only the
validation set's noise. Seed-to-seed noise (another head, another patch order, another random init of a control)
is often larger. Here every candidate contributes one row per seed it ran at; each resample draws the cases (the
same draw for everyone, paired) and, per candidate, its seeds with replacement; a candidate with one seed gets the
spread measured on seeded runs of its kind (its architecture's random-init controls) added as normal noise.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def resampled_means(
    runs: Sequence[np.ndarray], resamples: int, rng: np.random.Generator, extra_sd: Sequence[float] | None = None
) -> np.ndarray:
    """[resamples, candidates] means; ``runs[i]`` is [seeds, cases] of candidate i's per-case scores."""
    cases = {r.shape[1] for r in runs}
    if len(cases) != 1:
        raise ValueError(f"every run needs the same validation cases, got {sorted(cases)} per run")
    u = cases.pop()
    draw = rng.integers(u, size=(resamples, u))
    out = np.empty((resamples, len(runs)))
    for i, r in enumerate(runs):
        seeds = rng.integers(r.shape[0], size=(resamples, r.shape[0]))
        sub = r[seeds[:, :, None], draw[:, None, :]]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[:, i] = np.nanmean(sub, axis=(1, 2))
        sd = extra_sd[i] if extra_sd is not None else 0.0
        if sd > 0:
            out[:, i] += rng.normal(0.0, sd, size=resamples)
    return np.where(np.isfinite(out), out, -np.inf)


def p_best(stats: np.ndarray) -> np.ndarray:
    """Share of resamples in which each candidate is highest (ties shared)."""
    best = stats == stats.max(1, keepdims=True)
    return (best / best.sum(1, keepdims=True)).mean(0)


def tied_with(stats: np.ndarray, i: int, confidence: float) -> list[int]:
    """The candidates neither ahead of nor behind ``i`` in at least ``confidence`` of the resamples."""
    ahead = (stats[:, [i]] > stats).mean(0) + 0.5 * (stats[:, [i]] == stats).mean(0)
    return [j for j in range(stats.shape[1]) if j != i and max(ahead[j], 1 - ahead[j]) < confidence]
