"""The one mapping of results (service/core/results.py): engine objects ↔ rows ↔ API bodies, one name per
γ phase on the way."""

from __future__ import annotations

import typing

from bnrank.engine.entries import RankEntry, entry_from_view
from service.api.schemas import EntryOut, GammaOut
from service.core.models import RankingEntry
from service.core.results import ALCHEMY_GAMMA_PHASES, entry_values, entry_view, rank_entry

SUMMARY = {"count": 8, "share_below": 0.25}
STATS = {"summary": SUMMARY, "histogram": {}, "layers": []}


def _evaluated() -> RankEntry:
    return RankEntry(
        checkpoint="good",
        score=0.5,
        dice_per_class={"tumor": 0.5},
        gamma={"raw": STATS, "after_bn": STATS},
        curve=[{"step": 2.0, "score": 0.5}],
        steps=2,
        seconds=1.5,
        architecture="unet3d",
        load_report={"format": "safetensors"},
    )


def test_an_entry_goes_engine_to_row_to_body_and_back_unchanged() -> None:
    outcome = _evaluated()
    row = RankingEntry(id="re_1", name="good", position=0, rank=1, is_control=False, progress=1.0)
    for column, value in entry_values(outcome).items():
        setattr(row, column, value)
    assert row.error is None and row.load_report == outcome.load_report

    body = EntryOut.model_validate(entry_view(row, {phase: s["summary"] for phase, s in outcome.gamma.items()}))
    assert (body.score, body.steps, body.architecture, body.rank) == (0.5, 2, "unet3d", 1)
    back = entry_from_view(body.model_dump())
    assert (back.checkpoint, back.score, back.dice_per_class, back.curve) == (
        "good",
        outcome.score,
        outcome.dice_per_class,
        outcome.curve,
    )
    assert back.gamma == {"raw": {"summary": SUMMARY}, "after_bn": {"summary": SUMMARY}}

    engine = rank_entry(row)
    assert (engine.checkpoint, engine.status, engine.score, engine.steps) == ("re_1", "ok", 0.5, 2)


def test_a_failed_entry_keeps_its_error_and_ranks_as_failed() -> None:
    failed = RankEntry(checkpoint="bad", status="failed", error="loss became nan")
    values = entry_values(failed)
    assert values["error"] == "loss became nan" and "architecture" not in values
    row = RankingEntry(id="re_2", name="bad", position=1, status="cancelled", is_control=False)
    assert rank_entry(row).status == "failed"


def test_every_gamma_phase_has_one_name_the_api_knows() -> None:
    served = set(typing.get_args(GammaOut.model_fields["phase"].annotation))
    assert set(_evaluated().gamma) <= served  # the engine's ranking phases are stored and served as named
    assert set(ALCHEMY_GAMMA_PHASES.values()) <= served


def test_what_norm_only_trained_goes_engine_to_row_to_body_and_back() -> None:
    """Kinds, parameter counts and inserted affines ride in the row's load_report JSON (no column of their own)."""
    outcome = _evaluated()
    outcome.norm_kinds, outcome.inserted_affines = ["instance+affine-inserted"], ["model.0.adn.N"]
    outcome.norm_parameters, outcome.trained_parameters = 48, 75
    row = RankingEntry(id="re_3", name="in", position=0, rank=1, is_control=False, progress=1.0)
    for column, value in entry_values(outcome).items():
        setattr(row, column, value)
    assert row.load_report["format"] == "safetensors"  # the engine's report is kept beside it
    body = EntryOut.model_validate(entry_view(row, {}))
    assert (body.norm_kinds, body.norm_parameters, body.trained_parameters) == (["instance+affine-inserted"], 48, 75)
    assert body.inserted_affines == ["model.0.adn.N"]
    back = entry_from_view(body.model_dump())
    assert (back.norm_kinds, back.trained_parameters, back.inserted_affines) == (
        ["instance+affine-inserted"],
        75,
        ["model.0.adn.N"],
    )
    control = RankEntry(checkpoint="control", is_control=True, norm_kinds=["batch"], trained_parameters=9)
    control.norm_parameters = 6
    assert entry_values(control)["load_report"] == {
        "norm_only": {"kinds": ["batch"], "norm_parameters": 6, "trained_parameters": 9, "inserted_affines": []}
    }
    unrun = RankingEntry(id="re_4", name="queued", position=1, is_control=False, progress=0.0, steps=0, seconds=0.0)
    assert EntryOut.model_validate({**entry_view(unrun, {}), "status": "queued"}).norm_kinds == []
