"""Tie guidance: which candidates a ranking cannot tell apart at its budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bnrank.engine.checkpoints import save_weights
from bnrank.engine.configs.ranking import RankConfig
from bnrank.engine.entries import RankEntry
from bnrank.engine.ranking import Candidate, order_entries, rank_candidates, tie_guidance
from tests.engine.tiny import blob_task, narrow_model, small_config


def entry(name: str, cases: np.ndarray, halving_round: int | None = None) -> RankEntry:
    return RankEntry(
        checkpoint=name,
        score=float(cases.mean()),
        case_scores=cases.tolist(),
        halving_round=halving_round,
    )


def test_close_candidates_are_tied_and_a_clear_winner_is_not() -> None:
    rng = np.random.default_rng(0)
    spread = rng.normal(0, 0.1, (3, 12))  # three validations of twelve cases; cases differ a lot
    entries = order_entries(
        [
            entry("a", 0.70 + spread + rng.normal(0, 0.02, (3, 12))),
            entry("b", 0.699 + spread + rng.normal(0, 0.02, (3, 12))),
            entry("c", 0.40 + spread + rng.normal(0, 0.02, (3, 12))),
        ]
    )
    ties = tie_guidance(entries, resamples=500, confidence=0.9)
    by = {e.checkpoint: e for e in entries}
    assert by["a"].tied_with == ["b"] and by["b"].tied_with == ["a"] and by["c"].tied_with == []
    assert by["a"].tie_group == by["b"].tie_group == 1 and by["c"].tie_group == 2
    assert ties["top_group"] == ["a", "b"] and ties["groups"] == [["a", "b"], ["c"]]
    assert 0.4 < ties["p_top_is_best"] < 1.0
    assert by["c"].p_best == 0.0
    assert sum(e.p_best for e in entries) == pytest.approx(1.0)
    # the same inputs give the same guidance
    assert tie_guidance(entries, resamples=500, confidence=0.9) == ties


def test_only_candidates_scored_at_the_same_budget_are_compared() -> None:
    same = np.full((1, 4), 0.5)
    entries = order_entries([entry("late", same, halving_round=2), entry("early", same, halving_round=1)])
    tie_guidance(entries)
    assert [e.checkpoint for e in entries] == ["late", "early"]
    assert entries[0].tied_with == [] and entries[0].tie_group == 1 and entries[1].tie_group == 2


def test_entries_without_case_scores_use_the_spread_of_their_last_validations() -> None:
    def stored(name: str, dices: list[float]) -> RankEntry:
        curve = [{"step": 10 * (i + 1), "dice": d, "loss": 0.1} for i, d in enumerate(dices)]
        return RankEntry(checkpoint=name, score=float(np.mean(dices[-3:])), curve=curve)

    entries = order_entries(
        [stored("a", [0.5, 0.6, 0.4]), stored("b", [0.45, 0.55, 0.5]), stored("c", [0.1, 0.1, 0.1])]
    )
    tie_guidance(entries)
    by = {e.checkpoint: e for e in entries}
    assert by["a"].tied_with == ["b"] and by["c"].tie_group == 2


def test_ranking_result_carries_tie_guidance(tmp_path: Path) -> None:
    cands = [
        Candidate(f"c{i}", save_weights(narrow_model("unet3d", seed=i), tmp_path / f"c{i}.safetensors"))
        for i in range(2)
    ]
    config = small_config(max_steps=6, val_every=2, validation="patches", score="soft_dice")
    result = rank_candidates(cands, blob_task(), config, rank=RankConfig(tie_resamples=200))
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["ties"]["resamples"] == 200 and payload["ties"]["p_top_is_best"] is not None
    assert sorted(payload["ties"]["top_group"] + [n for g in payload["ties"]["groups"][1:] for n in g]) == sorted(
        e["checkpoint"] for e in payload["entries"]
    )
    for e in payload["entries"]:
        assert e["tie_group"] >= 1 and isinstance(e["tied_with"], list) and 0.0 <= e["p_best"] <= 1.0
        assert len(e["case_scores"]) == 3 and len(e["case_scores"][0]) == config.val_patches
