"""What a ranking reports: one `RankEntry` per candidate and the `RankingResult` around them.

Plain data, importing no torch: the CLI prints these tables for a local ranking and, read back from the
API's JSON (`entry_from_view`), for a served one, so `bnrank remote` starts without loading torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bnrank.engine.bn_only import TrainedNorms


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
    dice: float | None = None
    """Hard Dice over the validations behind the score (the score itself when it is hard Dice)."""
    case_scores: list[list[float | None]] = field(default_factory=list)
    """Per validation case (or fixed patch) score at each validation behind the score: what ties are drawn from."""
    halving_round: int | None = None
    """The successive-halving round this candidate stopped in (1-based); None without halving."""
    tied_with: list[str] = field(default_factory=list)
    """Candidates this one cannot be told apart from at this budget (same halving round), by bootstrap."""
    tie_group: int | None = None
    """Consecutive ranks tied with the group's first entry share an id; group 1 holds the top candidate."""
    p_best: float | None = None
    """Share of bootstrap resamples in which this candidate scores highest (among those of its round)."""
    norm_kinds: list[str] = field(default_factory=list)
    """Normalisation kinds whose γ/β were trained: batch, instance, group, layer (+affine-inserted)."""
    norm_parameters: int | None = None
    """γ and β trained (inserted affines included); the head's parameters are not counted here."""
    trained_parameters: int | None = None
    """Every parameter norm-only evaluation trained: γ/β plus the re-initialised head."""
    inserted_affines: list[str] = field(default_factory=list)
    """Normalisations without affine that got an identity affine for the evaluation (not in the checkpoint)."""
    calibration: dict[str, float] | None = None
    """A cascade control's measured cost of its architecture here: seconds per full fine-tuning step and per
    validation (engine/cascade.py ``calibrate``), what the budget cap is held against."""

    def set_trained(self, info: TrainedNorms) -> None:
        """Record what norm-only evaluation trained."""
        self.norm_kinds = list(info.kinds)
        self.norm_parameters = info.norm_parameters
        self.trained_parameters = info.trained_parameters
        self.inserted_affines = list(info.inserted_affines)

    @property
    def gamma_change(self) -> float | None:
        """Mean |Δγ| over every channel during BN-only training (after_bn's ``change``): it moves at ranking
        budgets, where the share of γ under an absolute threshold stays at 0 (issue 10, item 10)."""
        return gamma_change((self.gamma.get("after_bn") or {}).get("summary") or {})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gamma_change": self.gamma_change}


def gamma_change(summary: Mapping[str, Any]) -> float | None:
    """Mean |Δγ| during BN-only training from an after_bn γ summary; None where it holds no change (e.g. a stored
    summary from before the change was measured). The one reading the CLI, the JSON and the API share."""
    change = summary.get("change") or {}
    value = change.get("mean_abs_delta")
    return float(value) if value is not None else None


@dataclass
class RankingResult:
    dataset: str
    entries: list[RankEntry]
    config: dict[str, Any]
    stability: dict[str, Any]
    ties: dict[str, Any] = field(default_factory=dict)
    halving: dict[str, Any] | None = None
    cascade: dict[str, Any] | None = None
    """The cascade strategy's stages, stop rule, verdict and cost (bnrank/engine/cascade.py); None for norm_only."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "config": self.config,
            "stability": self.stability,
            "ties": self.ties,
            "halving": self.halving,
            "cascade": self.cascade,
            "entries": [e.to_dict() for e in self.entries],
        }

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def entry_from_view(view: Mapping[str, Any]) -> RankEntry:
    """An entry the API served (its ``EntryOut`` JSON), back as a ``RankEntry``: what the CLI's table prints."""
    return RankEntry(
        checkpoint=view["name"],
        status=view["status"],
        rank=view["rank"],
        score=view["score"],
        dice_per_class=view["dice_per_class"],
        gamma={phase: {"summary": summary} for phase, summary in view["gamma"].items()},
        curve=list(view["curve"]),
        steps=view["steps"],
        seconds=view["seconds"],
        error=view["error"] or (None if view["status"] == "ok" else view["status"]),
        is_control=view["is_control"],
        architecture=view["architecture"],
        norm_kinds=list(view.get("norm_kinds") or []),
        norm_parameters=view.get("norm_parameters"),
        trained_parameters=view.get("trained_parameters"),
        inserted_affines=list(view.get("inserted_affines") or []),
        tie_group=view.get("tie_group"),
        p_best=view.get("p_best"),
        tied_with=list(view.get("tied_with") or []),
        halving_round=view.get("halving_round"),
        load_report=_served_source(view),
    )


def _served_source(view: Mapping[str, Any]) -> dict[str, Any] | None:
    """The part of a load report a served entry carries (its format, a converted graph's report), in the
    engine's shape (``load_report["source"]["conversion"]``), so one printer reads local and served rankings."""
    if view.get("format") is None:
        return None
    conversion = view.get("conversion")
    source: dict[str, Any] = {}
    if isinstance(conversion, Mapping):
        source = {k: conversion[k] for k in ("opset", "producer", "converted") if k in conversion}
        source["conversion"] = dict(conversion)
    return {"format": view["format"], "source": source}
