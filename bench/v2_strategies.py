"""Benchmark v2's registered strategies and decision rule, as pure functions of one proxy seed's raw runs.

``bench/preregistration_v2.json`` names the strategies (norm-only, gain over controls, the cascade, short
fine-tuning, prior → norm-only, prior → race) and the rule that picks the default among their settings on the
tuning task. Each strategy here turns **one proxy seed's** runs into one order of the candidates and its CPU cost:
a proxy seed is one ranking a user would run, so a setting's measures are means over proxy seeds of per-seed
measures, and its cost is that of one run (the rule's "(mean over proxy seeds)").

A proxy seed's runs (:class:`SeedRuns`) hold, per candidate (controls included for norm-only), the norm-only
score and CPU seconds of every registered norm-only setting, the short fine-tuning run's validation Dice and CPU
seconds at each of its points, LogME's score and seconds, and the task's loading and preprocessing CPU seconds,
which every strategy pays once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

COST_CAP = 0.10  # the registered cap: a setting may cost at most this share of fine-tuning every candidate
REGRET_TIE_SD = 0.25  # settings within this many GT seed s.d. of the lowest regret are tied


def family_of(name: str) -> str:
    return "nnunet" if name.startswith("nnunet") else "unet3d"


def is_control(name: str) -> bool:
    return "_control_" in name


@dataclass
class SeedRuns:
    """One proxy seed's raw runs on one task (what the runners wrote, reduced to scores and CPU seconds)."""

    seed: int
    norm: dict[str, dict[str, float]] = field(default_factory=dict)  # setting -> {candidate or control: score}
    norm_cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    ft: dict[int, dict[str, float]] = field(default_factory=dict)  # short FT point (steps) -> {candidate: val Dice}
    ft_cpu: dict[int, dict[str, float]] = field(default_factory=dict)  # cumulative CPU s to that point
    logme: dict[str, float] | None = None
    logme_cpu: dict[str, float] | None = None
    load_cpu: float = 0.0


@dataclass
class Order:
    """One strategy setting's order of the candidates at one proxy seed, its CPU cost, and what it flagged."""

    scores: list[float]
    cpu: float
    flagged: list[str] = field(default_factory=list)


def lexicographic(*keys: Sequence[float]) -> list[float]:
    """One score vector ordering by the first key, ties broken by the next (higher = better)."""
    n = len(keys[0])
    ranks = np.zeros(n)
    for key in keys:
        dense = np.unique(np.asarray(key, float), return_inverse=True)[1]
        ranks = ranks * (n + 1) + dense
    return ranks.astype(float).tolist()


def halving_race(
    members: Sequence[str], points: Sequence[int], scores: Mapping[int, Mapping[str, float]]
) -> tuple[dict[str, tuple[int, float]], dict[str, int]]:
    """Successive halving over the short fine-tuning points: every member runs to ``points[0]``, the better half
    (rounded up) goes on to the next point, until one is left or the points run out.

    Returns each member's (round reached, score there), which orders the race (later round first, then score),
    and the point each member was trained to (what it cost: the runs are prefixes of one cosine run)."""
    alive = list(members)
    reached: dict[str, tuple[int, float]] = {}
    trained: dict[str, int] = {}
    for k, p in enumerate(points):
        for m in alive:
            reached[m] = (k, float(scores[p][m]))
            trained[m] = p
        if k + 1 == len(points):
            break
        keep = math.ceil(len(alive) / 2)
        alive = sorted(alive, key=lambda m: -reached[m][1])[:keep]
        if len(alive) == 1:
            reached[alive[0]] = (k + 1, reached[alive[0]][1])  # the winner: ranked above the last round's rest
            break
    return reached, trained


def race_order(
    base: Mapping[str, float], reached: Mapping[str, tuple[int, float]], cands: Sequence[str]
) -> list[float]:
    """Racers first (later round, then race score), every other candidate after them by ``base``."""
    inside = [1.0 if c in reached else 0.0 for c in cands]
    rnd = [float(reached[c][0]) if c in reached else 0.0 for c in cands]
    score = [reached[c][1] if c in reached else 0.0 for c in cands]
    return lexicographic(inside, rnd, score, [base[c] for c in cands])


def gains(runs: SeedRuns, setting: str, cands: Sequence[str]) -> tuple[dict[str, float], list[str], float]:
    """Each candidate's norm-only score minus the mean of its family's controls (this seed's three), the candidates
    inside the noise floor (|gain| within 2 s.d. of the controls' scores), and the controls' CPU seconds."""
    norm = runs.norm[setting]
    out, flagged, cpu = {}, [], 0.0
    for fam in sorted({family_of(c) for c in cands}):
        ctl = [k for k in norm if is_control(k) and family_of(k) == fam]
        if not ctl:
            raise KeyError(f"no {fam} control in {setting}")
        values = np.array([norm[k] for k in ctl])
        mean, sd = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
        cpu += sum(runs.norm_cpu[setting][k] for k in ctl)
        for c in cands:
            if family_of(c) == fam:
                out[c] = norm[c] - mean
                if abs(out[c]) <= 2 * sd:
                    flagged.append(c)
    return out, flagged, cpu


def norm_settings(runs: SeedRuns) -> list[str]:
    return list(runs.norm)


def strategy_orders(
    runs: SeedRuns, cands: Sequence[str], prior: Mapping[str, float] | None, race_top: int = 2
) -> dict[str, Order]:
    """Every registered strategy setting this seed's runs allow: {setting label: Order}."""
    out: dict[str, Order] = {}
    load = runs.load_cpu
    points = sorted(runs.ft)
    ft_complete = bool(points) and all(c in runs.ft[p] for p in points for c in cands)

    def ft_cost(trained: Mapping[str, int]) -> float:
        return sum(runs.ft_cpu[p][m] for m, p in trained.items())

    for s in norm_settings(runs):
        norm = runs.norm[s]
        if not all(c in norm for c in cands):
            continue
        cpu = sum(runs.norm_cpu[s][c] for c in cands)
        out[f"norm_only {s}"] = Order([norm[c] for c in cands], load + cpu)
        try:
            g, flagged, ctl_cpu = gains(runs, s, cands)
        except KeyError:
            g = None
        if g is not None:
            out[f"gain_over_controls {s}"] = Order([g[c] for c in cands], load + cpu + ctl_cpu, flagged)
            if ft_complete:
                members = []
                for fam in sorted({family_of(c) for c in cands}):
                    mine = sorted((c for c in cands if family_of(c) == fam), key=lambda c: -g[c])
                    members += mine[:race_top]
                reached, trained = halving_race(members, points, runs.ft)
                out[f"cascade {s}"] = Order(
                    race_order(g, reached, cands), load + cpu + ctl_cpu + ft_cost(trained), flagged
                )
        if prior is not None:
            out[f"prior_norm_only {s}"] = Order(
                lexicographic([prior[c] for c in cands], [norm[c] for c in cands]), load + cpu
            )
            if ft_complete:
                best = max(prior[c] for c in cands)
                top = [c for c in cands if prior[c] == best]
                rest = [c for c in cands if c not in top]
                reached, trained = halving_race(top, points, runs.ft)
                base = dict(zip(cands, lexicographic([prior[c] for c in cands], [norm[c] for c in cands]), strict=True))
                cost = load + sum(runs.norm_cpu[s][c] for c in rest) + ft_cost(trained)
                out[f"prior_race {s}"] = Order(race_order(base, reached, cands), cost)
    if ft_complete:
        for p in points:
            out[f"short_finetune {p} st"] = Order(
                [runs.ft[p][c] for c in cands], load + sum(runs.ft_cpu[p][c] for c in cands)
            )
    return out


def decide(
    measured: Mapping[str, Mapping[str, float]], cap: float = COST_CAP, tie_sd: float = REGRET_TIE_SD
) -> dict[str, object] | None:
    """The registered decision rule over ``{setting: {regret_sd, wtau, cost}}`` (means over proxy seeds; cost as a
    share of fine-tuning every candidate): among settings costing at most ``cap``, the lowest top-1 regret in GT
    seed s.d.; those within ``tie_sd`` of it are tied, and among them the highest τw, then the cheapest.

    Returns the chosen setting with the evidence (the eligible and tied settings), or None if none is eligible."""
    eligible = {k: m for k, m in measured.items() if m["cost"] <= cap and math.isfinite(m["regret_sd"])}
    if not eligible:
        return None
    best = min(m["regret_sd"] for m in eligible.values())
    tied = [k for k, m in eligible.items() if m["regret_sd"] <= best + tie_sd]

    def tau(k: str) -> float:
        t = eligible[k]["wtau"]
        return t if math.isfinite(t) else -math.inf

    chosen = sorted(tied, key=lambda k: (-tau(k), eligible[k]["cost"], k))[0]
    return {
        "chosen": chosen,
        "regret_sd": eligible[chosen]["regret_sd"],
        "wtau": eligible[chosen]["wtau"],
        "cost": eligible[chosen]["cost"],
        "lowest_regret_sd": best,
        "tied": sorted(tied),
        "eligible": len(eligible),
        "considered": len(measured),
    }


def engine_setting(label: str) -> tuple[str, dict[str, object]]:
    """What a registered setting's label means in the engine: (strategy, its norm-only stage's TrainConfig fields).

    The norm-only runs behind every setting train at ``lr`` for ``steps`` steps and score the last whole-volume
    validation (score window 1) by ``score``; short fine-tuning has no norm-only stage (empty fields).
    """
    words = label.split()
    kind = words[0]
    if kind == "short_finetune":
        return kind, {}
    if len(words) != 6 or words[1] != "lr" or words[4] != "st":
        raise ValueError(f"not a registered setting label: {label!r}")
    return kind, {
        "lr": float(words[2]),
        "max_steps": int(words[3]),
        "score": words[5],
        "score_window": 1,
        "validation": "whole",
    }
