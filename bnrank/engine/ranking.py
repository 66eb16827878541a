"""Ranking candidates by BN-only evaluation, with a random-init control and a stability report.

One candidate's failure (a bad file, a NaN loss) fails that entry with its reason; the others are still
ranked. The control row is a randomly initialised copy of each architecture: the thesis (§3.1.1) shows
pre-training does not always help, and the control tells the user whether any candidate beats random
features on their task.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from scipy.stats import kendalltau

from bnrank.engine.architectures import Architecture
from bnrank.engine.bn_only import bn_only_evaluate
from bnrank.engine.checkpoints import LoadReport, load_checkpoint, resolve_architecture
from bnrank.engine.errors import BNRankError
from bnrank.engine.training import ProgressFn, TaskData, TrainConfig, windowed_score


@dataclass
class Candidate:
    """A checkpoint to rank, or (path None) the random-init control of an architecture."""

    name: str
    path: Path | None = None
    architecture: str | Architecture | None = None
    network_def: Mapping[str, Any] | None = None
    build_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_control(self) -> bool:
        return self.path is None


@dataclass
class RankEntry:
    checkpoint: str
    status: str = "ok"
    rank: int | None = None
    score: float | None = None
    dice_per_class: dict[str, float | None] = field(default_factory=dict)
    gamma: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    error: str | None = None
    architecture: str | None = None
    is_control: bool = False
    load_report: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RankingResult:
    dataset: str
    entries: list[RankEntry]
    config: dict[str, Any]
    stability: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "config": self.config,
            "stability": self.stability,
            "entries": [e.to_dict() for e in self.entries],
        }

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def build_candidate(
    candidate: Candidate, data: TaskData, seed: int
) -> tuple[torch.nn.Module, Architecture, LoadReport | None]:
    """Build and load a candidate; the build is seeded so anything not loaded starts identically for all."""
    torch.manual_seed(seed)
    if candidate.is_control:
        arch, _ = resolve_architecture({}, candidate.architecture, candidate.network_def)
        kwargs = {**candidate.build_kwargs, "in_channels": data.in_channels, "out_channels": data.n_classes}
        return arch.build(**kwargs), arch, None
    model, report = load_checkpoint(
        candidate.path,
        out_channels=data.n_classes,
        in_channels=data.in_channels,
        architecture=candidate.architecture,
        network_def=candidate.network_def,
    )
    arch, _ = resolve_architecture(
        {}, report.architecture if candidate.network_def is None else None, candidate.network_def
    )
    return model, arch, report


def evaluate_candidate(
    candidate: Candidate, data: TaskData, config: TrainConfig, *, on_progress: ProgressFn | None = None
) -> RankEntry:
    """BN-only evaluation of one candidate. Input problems become a failed entry, never an exception."""
    entry = RankEntry(checkpoint=candidate.name, is_control=candidate.is_control)
    started = time.perf_counter()
    try:
        model, arch, report = build_candidate(candidate, data, config.seed)
        entry.architecture = arch.name
        entry.load_report = report.to_dict() if report else None
        result, before, after = bn_only_evaluate(
            model, arch, data, config, on_progress=on_progress, label=candidate.name
        )
    except BNRankError as exc:
        entry.status, entry.error = "failed", str(exc)
        entry.seconds = round(time.perf_counter() - started, 3)
        return entry
    entry.score = result.score
    entry.dice_per_class = result.dice_per_class
    entry.curve = result.curve
    entry.steps = result.steps
    entry.seconds = round(time.perf_counter() - started, 3)
    entry.gamma = {"before": before, "after": after}
    return entry


def order_entries(entries: Sequence[RankEntry]) -> list[RankEntry]:
    """Rank succeeded entries by score (best first); failed ones follow, unranked."""
    ok = sorted((e for e in entries if e.status == "ok"), key=lambda e: -(e.score or 0.0))
    for i, e in enumerate(ok, start=1):
        e.rank = i
    return ok + [e for e in entries if e.status != "ok"]


def stability(entries: Sequence[RankEntry], window: int, fraction: float = 0.5) -> dict[str, Any]:
    """How far to trust the order: the order at part of the budget against the order at the end.

    Each candidate is re-scored on its curve up to ``fraction`` of its steps; Kendall τ between that
    order and the final one near 1 means more training would not have reshuffled the ranking.
    """
    ok = [e for e in entries if e.status == "ok" and e.curve]
    result: dict[str, Any] = {"at_fraction": fraction, "kendall_tau": None, "same_top1": None}
    if len(ok) < 2:
        return result
    partial = [windowed_score(e.curve, window, upto_step=int(e.steps * fraction)) for e in ok]
    final = [e.score or 0.0 for e in ok]
    tau = kendalltau(partial, final).statistic
    result["kendall_tau"] = None if tau is None or math.isnan(tau) else round(float(tau), 4)
    result["same_top1"] = max(range(len(ok)), key=partial.__getitem__) == max(range(len(ok)), key=final.__getitem__)
    return result


def control_candidates(entries: Sequence[RankEntry], candidates: Sequence[Candidate]) -> list[Candidate]:
    """The random-init controls ``rank_candidates`` adds: one per architecture and build options seen.

    ``entries[i]`` is the (unordered) entry of ``candidates[i]``.
    """
    controls: dict[str, Candidate] = {}
    for entry, cand in zip(entries, candidates, strict=False):
        if entry.load_report is None or entry.is_control:
            continue
        kwargs = {
            k: v for k, v in entry.load_report["build_kwargs"].items() if k not in ("in_channels", "out_channels")
        }
        key = json.dumps([entry.architecture, kwargs, cand.network_def], sort_keys=True, default=str)
        arch = cand.architecture if cand.network_def is None else None
        controls.setdefault(
            key,
            Candidate(
                name=f"control: random init ({entry.architecture})",
                architecture=arch or entry.architecture,
                network_def=cand.network_def,
                build_kwargs=kwargs,
            ),
        )
    return list(controls.values())


def rank_candidates(
    candidates: Sequence[Candidate],
    data: TaskData,
    config: TrainConfig,
    *,
    dataset_name: str = "",
    control: bool = True,
    on_progress: ProgressFn | None = None,
) -> RankingResult:
    """Evaluate every candidate (and the random-init controls) on the same data, schedule and head seed."""
    entries: list[RankEntry] = []
    for i, cand in enumerate(candidates):

        def progress(step: int, total: int, msg: str, i: int = i) -> None:
            if on_progress:
                on_progress(i * total + step, len(candidates) * total, msg)

        entries.append(evaluate_candidate(cand, data, config, on_progress=progress))
    for cand in control_candidates(entries, candidates) if control else []:
        entries.append(evaluate_candidate(cand, data, config))
    ordered = order_entries(entries)
    return RankingResult(
        dataset=dataset_name,
        entries=ordered,
        config=asdict(config),
        stability=stability(ordered, config.score_window),
    )
