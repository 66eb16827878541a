"""One alchemy run (alchemy/run.py, checkpoint.py): the steps in order, modes and switches, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bnrank.engine.alchemy import (
    AlchemyConfig,
    AlchemyError,
    alchemy_checkpoint,
    maximization,
    prepare_model,
    run,
    run_alchemy,
)
from bnrank.engine.architectures import Architecture, architecture_from_network_def, get_architecture
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.errors import TrainingError
from bnrank.engine.fitting import load_checkpoint
from tests.engine.tiny import blob_task, narrow_model, small_config


def test_alchemy_runs_every_phase_and_reports_them() -> None:
    task = blob_task()
    arch = get_architecture("unet3d")
    model = narrow_model("unet3d")
    calls: list[tuple[int, int, str]] = []
    opts = AlchemyConfig(fraction=0.1, identify_steps=3)
    result = run_alchemy(
        model, arch, task, small_config(max_steps=4, val_every=2), opts, on_progress=lambda *a: calls.append(a)
    )
    assert result.mode == "alchemy" and result.options["maximization"] is True
    assert result.identification["steps"] == 3
    assert set(result.gamma) == {"raw", "after_identification", "after_modification", "after_alchemy"}
    total = result.selection["total"]
    assert result.modification["reinitialised"] == int(0.1 * total)
    assert result.gamma["after_modification"]["summary"]["count"] == total
    assert set(result.r_gamma) == {"before", "after"}
    assert set(result.dice_per_class) == {"sphere", "cube"} and 0.0 <= result.score <= 1.0
    assert result.steps == 4 and len(result.curve) == 2
    # progress runs through all phases on one scale
    assert all(total_ == 3 + 4 for _, total_, _ in calls)
    messages = " ".join(m for *_, m in calls)
    assert "[identification]" in messages and "[modification]" in messages and "[maximization" in messages
    assert [s for s, _, _ in calls] == sorted(s for s, _, _ in calls)
    assert all(p.requires_grad for p in model.parameters())  # every parameter was fine-tuned


def test_modes_and_switches(tmp_path: Path) -> None:
    task = blob_task()
    ckpt = save_weights(narrow_model("unet3d"), tmp_path / "c.safetensors")
    config = small_config(max_steps=2, val_every=2)
    scratch, _ = alchemy_checkpoint(ckpt, task, config, AlchemyConfig(mode="scratch"))
    again, _ = alchemy_checkpoint(ckpt, task, config, AlchemyConfig(mode="scratch"))
    assert scratch.identification is None and scratch.modification is None
    assert scratch.options["maximization"] is False and set(scratch.r_gamma) == {"before", "after"}
    assert scratch.score == pytest.approx(again.score)  # seeded
    assert set(scratch.gamma) == {"raw", "after_training"}

    ft, _ = alchemy_checkpoint(ckpt, task, config, AlchemyConfig(mode="finetune", maximization=True))
    assert ft.options["maximization"] is True and ft.identification is None
    assert set(ft.r_gamma) == {"before", "after"}
    plain, _ = alchemy_checkpoint(
        ckpt, task, config, AlchemyConfig(maximization=False, modification=False, identify_steps=2)
    )
    assert plain.identification is not None and plain.modification is None
    noid, _ = alchemy_checkpoint(ckpt, task, config, AlchemyConfig(identification=False, fraction=0.05))
    assert noid.identification is None and noid.modification["reinitialised"] > 0

    # scratch starts from a seeded fresh draw of the architecture, not from the checkpoint
    key = "down_tr64.ops.0.conv1.weight"
    raw = load_checkpoint(ckpt, out_channels=3)[0].state_dict()[key]
    start = prepare_model(ckpt, task, "scratch", 0)[0].state_dict()[key]
    assert not torch.equal(start, raw)
    assert torch.equal(start, prepare_model(ckpt, task, "scratch", 0)[0].state_dict()[key])
    assert torch.equal(prepare_model(ckpt, task, "finetune", 0)[0].state_dict()[key], raw)


def test_networks_without_own_gamma_are_refused() -> None:
    task = blob_task()

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv3d(1, 4, 3, padding=1)
            self.head = nn.Conv3d(4, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.body(x)))

    tiny = Architecture("tiny", "no BN", Tiny, ("head.",), lambda shapes: None)
    with pytest.raises(AlchemyError, match="needs normalisation layers"):
        run_alchemy(Tiny(), tiny, task, small_config())
    arch = architecture_from_network_def({"_target_": "UNet", "channels": [4, 8], "strides": [2], "norm": "instance"})
    model = arch.build(in_channels=1, out_channels=3)  # InstanceNorm without affine: no γ of its own
    with pytest.raises(AlchemyError, match=r"maximization .* no affine of their own"):
        run_alchemy(model, arch, task, small_config(), AlchemyConfig(mode="finetune", maximization=True))
    # plain fine-tuning needs no γ, and still works
    result = run_alchemy(Tiny(), tiny, task, small_config(max_steps=2, val_every=2), AlchemyConfig(mode="finetune"))
    assert result.steps == 2


def test_nan_during_maximization_fails_with_the_step_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    task = blob_task()
    ckpt = save_weights(narrow_model("unet3d"), tmp_path / "c.safetensors")
    out = tmp_path / "out" / "w.safetensors"
    real = maximization.r_gamma
    calls = [0]

    def exploding(model: nn.Module, alpha: float = 0.1, beta: float = 1.0) -> torch.Tensor:
        calls[0] += 1  # call 1: R_γ before fine-tuning; call k + 1: training step k
        r = real(model, alpha, beta)
        return r * float("nan") if calls[0] == 4 else r

    monkeypatch.setattr(maximization, "r_gamma", exploding)
    with pytest.raises(TrainingError, match=r"maximization.*at step 3"):
        alchemy_checkpoint(ckpt, task, small_config(), AlchemyConfig(identify_steps=2, fraction=0.05), out=out)
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # not even a .partial file


@pytest.mark.parametrize(
    ("options", "steps"),
    [
        ({}, ["identify", "modify", "maximize"]),
        ({"identification": False}, ["modify", "maximize"]),
        ({"modification": False}, ["identify", "maximize"]),
        ({"maximization": False}, ["identify", "modify", "fine_tune"]),
        ({"mode": "finetune"}, ["fine_tune"]),
        ({"mode": "scratch", "maximization": True}, ["maximize"]),
    ],
)
def test_the_three_steps_run_in_order_each_behind_its_switch(options, steps, monkeypatch) -> None:
    called: list[str] = []
    for name in ("identify", "modify", "maximize", "fine_tune"):
        real = getattr(run, name)

        def spy(*args, _real=real, _name=name, **kw):
            called.append(_name)
            return _real(*args, **kw)

        monkeypatch.setattr(run, name, spy)
    config = AlchemyConfig(**{"identify_steps": 2, "fraction": 0.05, **options})
    result = run_alchemy(
        narrow_model("unet3d"), get_architecture("unet3d"), blob_task(), small_config(max_steps=2, val_every=2), config
    )
    assert called == steps
    assert (result.identification is not None) == ("identify" in steps)
    assert (result.modification is not None) == ("modify" in steps) == (result.selection is not None)
    assert result.options["maximization"] == ("maximize" in steps)
