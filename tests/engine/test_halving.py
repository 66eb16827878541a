"""Successive halving in rank_candidates: rounds, budgets, continued runs, and what the result says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnrank.engine.checkpoints import save_weights
from bnrank.engine.configs.ranking import RankConfig
from bnrank.engine.ranking import (
    Candidate,
    evaluate_candidate,
    evaluate_round,
    halving_steps,
    halving_survivors,
    rank_candidates,
)
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


def test_halving_survivors_keep_the_best_share_in_order() -> None:
    assert halving_survivors([0.1, 0.9, 0.5, 0.7], 2) == [1, 3]
    assert halving_survivors([0.1, 0.9, 0.5], 2) == [1, 2]  # ceil(3 / 2)
    assert halving_survivors([0.4, 0.4, 0.2], 3) == [0]  # a tie keeps the first given
    assert halving_survivors([0.3], 2) == [0]


def test_a_round_run_alone_is_the_prefix_the_kept_runs_compare(tmp_path: Path) -> None:
    """What a service does with one task per round (evaluate_round from step 0) gives the scores, and so the
    survivors, that rank_candidates gets by continuing its runs in memory."""
    task = blob_task()
    config = small_config(max_steps=8, val_every=2, score_window=1, validation="whole", score="dice")
    rank = RankConfig(halving_rounds=2)
    cands = candidates(tmp_path, 4)
    kept = rank_candidates(cands, task, config, control=False, rank=rank)
    first = [evaluate_round(c, task, config, rank, 1) for c in cands]
    assert all(e.steps == 4 and e.halving_round == 1 for e in first)
    kept_at_cut = [
        next(p["score"] for p in e.curve if p["step"] == 4 and "score" in p)
        for e in sorted(kept.entries, key=lambda e: [c.name for c in cands].index(e.checkpoint))
    ]
    assert [e.score for e in first] == pytest.approx(kept_at_cut, abs=1e-6)
    survivors = [cands[i].name for i in halving_survivors([e.score or 0.0 for e in first], rank.halving_eta)]
    assert survivors == kept.halving["rounds"][1]["candidates"]
    by_name = {e.checkpoint: e for e in kept.entries}
    for name in survivors:
        second = evaluate_round(next(c for c in cands if c.name == name), task, config, rank, 2)
        assert (second.steps, second.halving_round) == (8, 2)
        assert second.score == pytest.approx(by_name[name].score, abs=1e-6)
    with pytest.raises(ValueError, match="halving round 3"):
        evaluate_round(cands[0], task, config, rank, 3)
