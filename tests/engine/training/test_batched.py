"""Candidates of one architecture trained together in one vmapped network match training them one at a time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bnrank.engine.architectures import get_architecture
from bnrank.engine.bn_only import bn_only_setup
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.configs.ranking import RankConfig
from bnrank.engine.ranking import Candidate, rank_candidates
from bnrank.engine.training.batched import train_together
from bnrank.engine.training.trainer import Trainer
from tests.engine.tiny import blob_task, narrow_model, small_config

CONFIG = {"max_steps": 6, "val_every": 2, "validation": "patches", "score": "soft_dice"}


def trainers(n: int, **kw) -> list[Trainer]:
    task, arch, config = blob_task(), get_architecture("unet3d"), small_config(**{**CONFIG, **kw})
    out = []
    for i in range(n):
        model = narrow_model("unet3d", seed=20 + i)
        params, _, _ = bn_only_setup(model, arch, config.seed)
        out.append(Trainer(model, params, task, config, label=f"c{i}"))
    return out


def test_training_together_equals_one_at_a_time_and_can_go_on_alone() -> None:
    alone = [t.run(3) for t in trainers(3)]
    together = trainers(3)
    assert train_together(together, 3) == {}
    for a, b in zip(alone, together, strict=True):
        assert b.step == 3
        for (name, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
            # grouped convolutions sum in another order; Adam's first steps amplify that on tiny gradients
            torch.testing.assert_close(q, p, atol=1e-3, rtol=1e-3, msg=name)
        for p, q in zip(a.model.buffers(), b.model.buffers(), strict=True):
            torch.testing.assert_close(q.float(), p.float(), atol=1e-3, rtol=1e-3)
    # the optimiser state came back: each goes on alone as it would have
    for a, b in zip(alone, together, strict=True):
        a.run(), b.run()
        assert b.result().score == pytest.approx(a.result().score, abs=1e-3)
        assert [p["step"] for p in b.curve] == [p["step"] for p in a.curve] == [2, 4, 6]


def test_rank_candidates_batched_gives_the_same_ranking(tmp_path: Path) -> None:
    cands = [
        Candidate(f"c{i}", save_weights(narrow_model("unet3d", seed=30 + i), tmp_path / f"c{i}.safetensors"))
        for i in range(3)
    ]
    config = small_config(**CONFIG)
    one, many = (
        rank_candidates(cands, blob_task(), config, control=False, rank=RankConfig(batched=b)) for b in (False, True)
    )
    assert [e.checkpoint for e in many.entries] == [e.checkpoint for e in one.entries]
    for a, b in zip(one.entries, many.entries, strict=True):
        assert b.score == pytest.approx(a.score, abs=1e-3) and b.steps == a.steps == 6
