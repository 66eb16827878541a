"""Successive halving in rank_candidates: rounds, budgets, continued runs, and what the result says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnrank.engine.checkpoints import save_weights
from bnrank.engine.ranking import Candidate, RankConfig, evaluate_candidate, halving_steps, rank_candidates
from tests.engine.tiny import blob_task, narrow_model, small_config


def candidates(tmp_path: Path, n: int) -> list[Candidate]:
    return [
        Candidate(f"c{i}", save_weights(narrow_model("unet3d", seed=10 + i), tmp_path / f"c{i}.safetensors"))
        for i in range(n)
    ]


def test_halving_steps() -> None:
    assert halving_steps(100, 1, 2) == [100]
    assert halving_steps(100, 3, 2) == [25, 50, 100]
    assert halving_steps(90, 3, 3) == [10, 30, 90]


def test_halving_keeps_the_better_half_and_continues_their_runs(tmp_path: Path) -> None:
    task = blob_task()
    config = small_config(
        max_steps=8, val_every=2, score_window=1, validate_at="scored", validation="patches", score="soft_dice"
    )
    cands = candidates(tmp_path, 4)
    result = rank_candidates(cands, task, config, control=False, rank=RankConfig(halving_rounds=2))
    assert [r["steps"] for r in result.halving["rounds"]] == [4, 8]
    assert len(result.halving["rounds"][0]["candidates"]) == 4
    survivors = result.halving["rounds"][1]["candidates"]
    assert len(survivors) == 2
    assert result.halving["candidate_steps"] == 4 * 4 + 2 * 4
    by_name = {e.checkpoint: e for e in result.entries}
    for e in result.entries:
        assert e.halving_round == (2 if e.checkpoint in survivors else 1)
        assert e.steps == (8 if e.checkpoint in survivors else 4)
    # survivors rank first, and each was better at the cut than every candidate that stopped there
    assert {e.checkpoint for e in result.entries if e.rank in (1, 2)} == set(survivors)
    at_cut = {
        e.checkpoint: next(p["score"] for p in e.curve if p["step"] == 4 and "score" in p) for e in result.entries
    }
    assert min(at_cut[s] for s in survivors) >= max(v for k, v in at_cut.items() if k not in survivors)
    # a survivor's run was continued, not restarted: it equals the run it would have had alone
    alone = evaluate_candidate(next(c for c in cands if c.name == survivors[0]), task, config)
    assert by_name[survivors[0]].score == pytest.approx(alone.score, abs=1e-6)
    assert by_name[survivors[0]].gamma["after_bn"]["summary"]["mean"] == pytest.approx(
        alone.gamma["after_bn"]["summary"]["mean"], abs=1e-6
    )
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["halving"]["rounds"][1]["steps"] == 8
    assert {e["halving_round"] for e in payload["entries"]} == {1, 2}


def test_without_halving_nothing_changes(tmp_path: Path) -> None:
    task = blob_task()
    result = rank_candidates(candidates(tmp_path, 2), task, small_config(max_steps=3, val_every=3), control=False)
    assert result.halving is None
    assert all(e.halving_round is None and e.steps == 3 for e in result.entries)
