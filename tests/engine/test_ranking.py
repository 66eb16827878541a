"""Ranking candidates (engine/ranking.py) on a tiny synthetic task."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from bnrank.engine.architectures import build_model
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.ranking import Candidate, rank_candidates
from tests.engine.tiny import WIDTH, blob_task, small_config


def test_ranking_survives_a_broken_candidate(tmp_path: Path) -> None:
    task = blob_task()
    good = save_weights(
        build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH), tmp_path / "good.safetensors"
    )
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:1000])
    poisoned = tmp_path / "nan.safetensors"
    state = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH).state_dict()
    state["down_tr64.ops.0.bn1.weight"][:] = float("nan")
    save_file(state, str(poisoned))
    cands = [Candidate("truncated", truncated), Candidate("good", good), Candidate("nan", poisoned)]
    result = rank_candidates(cands, task, small_config(max_steps=3, val_every=3))
    by_name = {e.checkpoint: e for e in result.entries}
    assert by_name["good"].status == "ok" and by_name["good"].rank is not None
    assert by_name["truncated"].status == "failed" and "truncated.safetensors" in by_name["truncated"].error
    assert by_name["nan"].status == "failed" and "NaN" in by_name["nan"].error
    control = [e for e in result.entries if e.is_control]
    assert len(control) == 1 and control[0].status == "ok"
    assert sorted(e.rank for e in result.entries if e.rank) == [1, 2]
    assert result.to_dict()["entries"][0]["rank"] == 1
