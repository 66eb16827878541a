"""Successive halving: the step each round ends at, who survives a round, and the summary a ranking reports.

The rules are shared: `bnrank rank` continues each survivor's run in memory (ranking.py), the service re-trains
each round in a task of its own (service/core/jobflow.py); both call these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bnrank.engine.entries import RankEntry

CONTINUED = "kept in memory between rounds: model, optimiser, patch schedule and RNG state of every candidate"
RETRAINED = (
    "each round re-trains its candidates from step 0 to the round's end (one task per candidate and round, "
    "nothing carried between processes); the scores equal those of the engine's continued runs"
)


def halving_steps(max_steps: int, rounds: int, eta: int) -> list[int]:
    """The step each halving round ends at: max_steps / eta^(rounds-1-k), the last exactly max_steps."""
    return sorted({max(1, max_steps // eta ** (rounds - 1 - k)) for k in range(rounds)})


def halving_survivors(scores: Sequence[float], eta: int) -> list[int]:
    """Which candidates go on to the next halving round: the best ceil(n / eta) (at least one) by their score at
    this round's end, ties kept in the given order. The one selection rule: the engine's rounds and the
    service's (service/core/jobflow.py) both call it."""
    keep = max(1, math.ceil(len(scores) / eta))
    return sorted(range(len(scores)), key=lambda i: -scores[i])[:keep]



def halving_summary(
    entries: Sequence[RankEntry], ends: Sequence[int], eta: int, max_steps: int, *, retrained: bool
) -> dict[str, Any]:
    """A ranking's ``halving`` report: each round's candidates (those still succeeding at its end), and the steps spent.

    ``entries`` are every entry in evaluation order (candidates, then controls); an entry that never started
    training has no ``halving_round`` and is left out. ``retrained``: every round trains from step 0 again (the
    service), so a candidate stopped in round r cost the steps of rounds 1..r; otherwise (`bnrank rank`) its run
    was continued and cost the steps of round r's end.
    """
    reached = [e for e in entries if e.halving_round is not None]

    def stopped(e: RankEntry) -> int:
        return e.halving_round or 1

    rounds = [
        {
            "round": k + 1,
            "steps": end,
            "candidates": [
                e.checkpoint for e in reached if stopped(e) > k + 1 or (stopped(e) == k + 1 and e.status == "ok")
            ],
        }
        for k, end in enumerate(ends)
    ]
    spent = (sum(ends[: stopped(e)]) if retrained else ends[stopped(e) - 1] for e in reached)
    return {
        "rounds": rounds,
        "eta": eta,
        "state": RETRAINED if retrained else CONTINUED,
        "candidate_steps": sum(spent),
        "candidate_steps_without_halving": max_steps * len(reached),
    }
