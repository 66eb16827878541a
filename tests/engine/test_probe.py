"""The γ-clipping probe (thesis Fig. 3.1) and `bnrank probe`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bnrank.cli import main
from bnrank.engine.alchemy import AlchemyError
from bnrank.engine.architectures import Architecture, architecture_from_network_def, build_model, get_architecture
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.gamma import bn_layers
from bnrank.engine.probe import clip_probe, gamma_probe
from bnrank.engine.training.validation import evaluate, mean_foreground
from tests.engine.tiny import WIDTH, blob_task, small_config
from tests.engine.volumes import write_nnunet_dataset


def _gammas(model: nn.Module) -> torch.Tensor:
    return torch.cat([bn.weight.detach().clone().reshape(-1) for _, bn in bn_layers(model)])


def test_probe_shares_are_monotone_and_gammas_restored() -> None:
    task = blob_task()
    torch.manual_seed(0)
    model = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    config = small_config(max_steps=3, val_every=3)
    calls = []
    result = gamma_probe(
        model,
        get_architecture("unet3d"),
        task,
        config,
        thresholds=[0.5, 0.9, 1.02, 1e-6],
        draws=2,
        on_progress=lambda *a: calls.append(a),
    )
    thresholds = [r.threshold for r in result.rows]
    assert thresholds == sorted(thresholds) == [1e-6, 0.5, 0.9, 1.02]
    shares = [r.share_clipped for r in result.rows]
    assert shares == sorted(shares)  # monotone in the threshold
    assert result.rows[0].n_clipped == 0 and result.rows[0].dice_threshold == result.dice_unclipped
    g = _gammas(model).abs()
    for r in result.rows:
        assert r.n_clipped == int((g < r.threshold).sum())
        assert r.share_clipped == pytest.approx(r.n_clipped / result.n_channels)
        assert len(r.dice_random_draws) == 2 and 0.0 <= r.dice_random <= 1.0
    assert result.rows[-1].n_clipped > 0  # 1.02 clips something after 3 BN-only steps from γ = 1
    # γ are back where BN-only training left them, so the unclipped Dice is reproducible
    assert mean_foreground(evaluate(model, task.val, task.n_classes, config)) == pytest.approx(result.dice_unclipped)
    assert result.bn_only["steps"] == 3 and result.bn_only["gamma"]["summary"]["count"] == result.n_channels
    assert calls and all(total == 3 + 1 + 4 * 3 for _, total, _ in calls)
    assert calls[-1][0] == calls[-1][1]


def test_clipping_by_threshold_zeroes_exactly_those_gammas(monkeypatch) -> None:
    task = blob_task()
    model = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    with torch.no_grad():
        for _, bn in bn_layers(model):
            bn.weight.uniform_(0.5, 1.5)
        first = next(bn for _, bn in bn_layers(model))
        first.weight[:2] = 0.01
    seen = []

    def spy(m, volumes, n_classes, config):
        seen.append(_gammas(m))
        return evaluate(m, volumes, n_classes, config)

    monkeypatch.setattr("bnrank.engine.probe.evaluate", spy)
    before = _gammas(model)
    result = clip_probe(model, task, small_config(), thresholds=[0.05], draws=1)
    assert result.rows[0].n_clipped == 2
    unclipped, by_threshold, random = seen
    assert torch.equal(unclipped, before)
    assert torch.equal(by_threshold[:2], torch.zeros(2)) and torch.equal(by_threshold[2:], before[2:])
    assert int((random == 0).sum()) == 2
    assert torch.equal(_gammas(model), before)


def test_probe_needs_normalisation() -> None:
    task = blob_task()
    arch = architecture_from_network_def({"_target_": "UNet", "channels": [4, 8], "strides": [2], "norm": "instance"})
    model = arch.build(in_channels=1, out_channels=3)  # InstanceNorm without affine: probed on inserted affines
    probe = gamma_probe(model, arch, task, small_config(max_steps=2, val_every=2), thresholds=[0.5], draws=1)
    assert probe.bn_only["norm"]["kinds"] == ["instance+affine-inserted"] and probe.bn_only["norm"]["inserted_affines"]
    assert probe.n_channels == probe.bn_only["gamma"]["summary"]["count"] > 0
    plain = nn.Sequential(nn.Conv3d(1, 3, 1))
    with pytest.raises(AlchemyError, match="needs normalisation layers"):
        clip_probe(plain, task, small_config())
    tiny = Architecture("tiny", "", lambda **_: plain, ("0.",), lambda s: None)
    with pytest.raises(AlchemyError):
        gamma_probe(plain, tiny, task, small_config())


def test_probe_refuses_bad_thresholds() -> None:
    model = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    with pytest.raises(AlchemyError, match="thresholds"):
        clip_probe(model, blob_task(), small_config(), thresholds=[-0.1])


def test_cli_probe_end_to_end(tmp_path: Path, capsys) -> None:
    dataset = write_nnunet_dataset(tmp_path / "Dataset001_Synthetic", n_cases=4, shape=(24, 24, 24))
    ckpt = save_weights(build_model("unet3d", in_channels=1, out_channels=2, width=WIDTH), tmp_path / "c.safetensors")
    js = tmp_path / "p.json"
    argv = ["probe", "--dataset", str(dataset), "--checkpoint", str(ckpt), "--json", str(js), "--quiet"]
    argv += ["--thresholds", "0.9", "1.05", "--draws", "1", "--max-steps", "2", "--val-every", "2"]
    argv += ["--patch-size", "16", "--precision", "fp32", "--threads", "1", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Dice (|γ|<T)" in out and "Dice (random)" in out
    report = json.loads(js.read_text())
    assert [r["threshold"] for r in report["rows"]] == [0.9, 1.05]
    assert report["rows"][0]["share_clipped"] <= report["rows"][1]["share_clipped"]
    assert main([*argv, "--draws", "0"]) == 2
    assert "error:" in capsys.readouterr().err
