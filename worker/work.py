"""What one unit of work (a ranking entry, an alchemy or probe fold) carries from its claim to its result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from bnrank.engine.ranking import Candidate
from service.core.params import JobParams

WorkRow: TypeAlias = type[Any]
"""A kind's table of units of work (service/core/kinds/): every one has the same lease columns."""


@dataclass
class Work:
    """What a task needs from the database, read once while claiming its row."""

    job_id: str
    row_id: str
    owner: str
    name: str
    params: JobParams | None
    dataset_id: str | None
    dataset_uri: str | None
    skip_cases: set[str]
    checkpoint_id: str | None
    attempt: int = 0
    seconds: float = 0.0
    candidate: Candidate | None = None
    problem: str | None = None
    halving_round: int | None = None
    """A ranking entry's successive-halving round to run (None: no halving, or the first round)."""
    stage: str | None = None
    """A ranking entry's cascade stage: None for norm-only evaluation, ``race`` for a fine-tuning racer."""
    seed: int | None = None
    """The seed a ranking entry runs at where it is not the ranking's own (cascade control and race seeds)."""
    fold: int | None = None
    """The fold of a job run once per fold (None for a ranking entry)."""
    graph_source: tuple[Path, str | None] | None = None
    """For the control of an ONNX graph: a candidate's file, read first so the graph's architecture is known."""
