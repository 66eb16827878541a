"""Norm-only evaluation (engine/norms.py, bn_only.py) for every normalisation kind, γ and the probe across kinds,
alchemy's pairing beyond BatchNorm, the refusal of networks without normalisation, and a mixed pool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bnrank.engine.alchemy import AlchemyConfig, AlchemyError, find_conv_bn_pairs, modify, run_alchemy, select_redundant
from bnrank.engine.architectures import architecture_from_network_def, build_model
from bnrank.engine.bn_only import no_norm_message, norm_only_evaluate
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.errors import NetworkDefError, TrainingError
from bnrank.engine.gamma import gamma_stats
from bnrank.engine.norms import InsertedAffine, has_norm, insert_affines, norm_layers
from bnrank.engine.probe import clip_probe
from bnrank.engine.ranking import Candidate, rank_candidates
from tests.engine.norm_nets import CHANNELS, KINDS, NormNet, norm_arch, norm_model
from tests.engine.tiny import WIDTH, blob_task, small_config

CONFIG = {"max_steps": 4, "val_every": 2}


@pytest.mark.parametrize("kind", list(KINDS))
def test_norm_only_trains_only_norm_affines_and_head(kind: str) -> None:
    label, inserted = KINDS[kind]
    model = norm_model(kind)
    kernels = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(("conv1.", "conv2."))}
    own = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(("norm1.", "norm2."))}
    head = model.head.weight.detach().clone()
    result, before, after, trained = norm_only_evaluate(model, norm_arch(kind), blob_task(), small_config(**CONFIG))

    for name, value in kernels.items():  # the candidate's kernels, bit for bit
        assert torch.equal(dict(model.named_parameters())[name].detach(), value), name
    assert not torch.equal(model.head.weight.detach(), head)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.{p}" for m in ("norm1", "norm2", "head") for p in ("weight", "bias")}
    for name in ("norm1.weight", "norm2.weight"):
        start = own.get(name, torch.ones(CHANNELS))
        assert not torch.equal(dict(model.named_parameters())[name].detach(), start), f"{name} did not train"

    assert trained.kinds == [label]
    assert trained.inserted_affines == (["norm1", "norm2"] if inserted else [])
    assert trained.norm_parameters == 2 * 2 * CHANNELS
    assert trained.head_parameters == CHANNELS * 3 + 3
    assert trained.trained_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert isinstance(model.norm1, InsertedAffine) is inserted
    # γ as loaded cover the candidate's own affines only; after training every γ trained, kinds named
    assert before["summary"]["count"] == (0 if inserted else 2 * CHANNELS)
    assert after["summary"]["count"] == 2 * CHANNELS and after["summary"]["kinds"] == [label]
    assert {row["kind"] for row in after["layers"]} == {label}
    assert after["summary"]["change"]["mean_abs_delta"] > 0
    assert result.steps == 4 and 0.0 <= result.score <= 1.0


@pytest.mark.parametrize("kind", ["instance-noaffine", "layer-noaffine", "batch"])
def test_inserted_affines_start_as_the_identity_and_leave_keys_alone(kind: str) -> None:
    model = norm_model(kind).eval()
    keys = list(model.state_dict())
    x = torch.randn(2, 1, 8, 8, 8)
    out = model(x)
    inserted = insert_affines(model)
    assert torch.allclose(model(x), out, atol=1e-6)
    assert insert_affines(model) == []  # a second call inserts nothing
    if kind == "batch":
        assert inserted == [] and list(model.state_dict()) == keys
    else:  # the checkpoint's keys moved one level down, so insertion must follow loading
        assert inserted == ["norm1", "norm2"]
        assert [n for n, _ in model.named_parameters() if n.startswith("norm1")] == ["norm1.weight", "norm1.bias"]


def test_layernorm_gamma_is_per_feature_over_normalized_shape() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm((2, 3)), nn.GroupNorm(2, 4), nn.InstanceNorm3d(5))
    stats = gamma_stats(model)
    assert stats["n_layers"] == 2  # the InstanceNorm has no affine and none was inserted
    assert [row["count"] for row in stats["layers"]] == [6, 4]
    assert stats["summary"]["kinds"] == ["group", "layer"]
    insert_affines(model)
    assert gamma_stats(model)["summary"]["kinds"] == ["instance+affine-inserted", "group", "layer"]
    assert [layer.name for layer in norm_layers(model)] == ["1", "2", "3"]
    # no γ as loaded (InstanceNorm without affine): still strict JSON, as the service stores it
    json.dumps(gamma_stats(norm_model("instance-noaffine")), allow_nan=False)


@pytest.mark.parametrize("kind", ["instance", "instance-noaffine", "group", "layer"])
def test_probe_clips_every_kind_and_restores_gamma(kind: str) -> None:
    model = norm_model(kind)
    insert_affines(model)
    with torch.no_grad():
        model.norm1.weight[:3] = 0.01  # three small γ: what the threshold clips
    gammas = [layer.weight.detach().clone() for layer in norm_layers(model)]
    probe = clip_probe(model, blob_task(), small_config(**CONFIG), thresholds=[0.05], draws=1)
    assert probe.n_channels == 2 * CHANNELS
    assert probe.rows[0].n_clipped == 3
    for layer, saved in zip(norm_layers(model), gammas, strict=True):
        assert torch.equal(layer.weight.detach(), saved)


def test_probe_needs_gamma_it_can_clip() -> None:
    with pytest.raises(AlchemyError, match="no affine"):
        clip_probe(norm_model("instance-noaffine"), blob_task(), small_config(**CONFIG))
    with pytest.raises(AlchemyError, match="needs normalisation layers"):
        clip_probe(NormNet("none"), blob_task(), small_config(**CONFIG))


@pytest.mark.parametrize("kind", ["group", "instance", "instance-noaffine"])
def test_alchemy_pairs_conv_with_group_and_instance_norm(kind: str) -> None:
    model = norm_model(kind)
    insert_affines(model)
    pairs, skipped = find_conv_bn_pairs(model, (1, 1, 8, 8, 8))
    assert skipped == []
    assert [(p.bn, p.conv, p.channels, p.kind) for p in pairs] == [
        ("norm1", "conv1", CHANNELS, KINDS[kind][0]),
        ("norm2", "conv2", CHANNELS, KINDS[kind][0]),
    ]
    selection, _ = select_redundant(model, fraction=0.125)
    marked = {name: idx for name, idx in selection.channels.items()}
    kernel = model.conv1.weight.detach().clone()
    report = modify(model, selection, pairs, skipped, seed=0)
    assert report["reinitialised"] == 2
    for name, idx in marked.items():
        layer = dict(model.named_modules())[name]
        assert torch.equal(layer.weight.detach()[idx], torch.ones(len(idx)))
    if "norm1" in marked:
        changed = (model.conv1.weight.detach() != kernel).flatten(1).any(1)
        assert changed.nonzero().flatten().tolist() == marked["norm1"]


def test_alchemy_refuses_layernorm_pairs_and_networks_without_own_affine() -> None:
    pairs, skipped = find_conv_bn_pairs(norm_model("layer"), (1, 1, 8, 8, 8))
    assert pairs == [] and len(skipped) == 2  # channels-last LayerNorms: fed through a permute
    assert {s.kind for s in skipped} == {"layer"}
    task, config = blob_task(), small_config(**CONFIG)
    with pytest.raises(AlchemyError, match=r"instance\) have no affine of their own \(norm1, norm2\)"):
        run_alchemy(norm_model("instance-noaffine"), norm_arch("instance-noaffine"), task, config, AlchemyConfig())
    with pytest.raises(AlchemyError, match="needs normalisation layers"):
        run_alchemy(NormNet("none"), norm_arch("none"), task, config, AlchemyConfig())
    # a GroupNorm network with its own affine goes through identification, modification and maximization
    options = AlchemyConfig(identify_steps=2, fraction=0.125)
    result = run_alchemy(norm_model("group"), norm_arch("group"), task, config, options)
    assert result.modification["reinitialised"] == 2 and result.r_gamma["after"] != result.r_gamma["before"]


def test_a_network_without_normalisation_is_refused_with_that_message() -> None:
    with pytest.raises(TrainingError) as err:
        norm_only_evaluate(NormNet("none"), norm_arch("none"), blob_task(), small_config(**CONFIG))
    assert str(err.value) == no_norm_message("tiny-none")
    assert "has no normalisation layers (BatchNorm, InstanceNorm, GroupNorm or LayerNorm)" in str(err.value)
    arch = architecture_from_network_def({"_target_": "UNet", "channels": [4, 8], "strides": [2], "norm": None})
    with pytest.raises(NetworkDefError, match="no normalisation layers"):
        arch.build()
    for norm in ("instance", "batch", ("group", {"num_groups": 2})):  # every kind builds now
        arch = architecture_from_network_def({"_target_": "UNet", "channels": [4, 8], "strides": [2], "norm": norm})
        assert has_norm(arch.build())


def test_mixed_pool_gets_a_control_per_architecture_and_the_norm_column(tmp_path: Path) -> None:
    task = blob_task()
    torch.manual_seed(1)
    bn = save_weights(build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH), tmp_path / "bn.safetensors")
    network_def = {"_target_": "UNet", "channels": [4, 8], "strides": [2], "norm": "instance"}
    inorm = architecture_from_network_def(network_def).build(in_channels=1, out_channels=3)
    inorm_path = save_weights(inorm, tmp_path / "in.safetensors")
    candidates = [Candidate("bn", bn), Candidate("in", inorm_path, network_def=network_def)]
    result = rank_candidates(candidates, task, small_config(max_steps=2, val_every=2))
    by_name = {e.checkpoint: e for e in result.entries}
    assert all(e.status == "ok" for e in result.entries), [e.error for e in result.entries]
    controls = sorted(e.checkpoint for e in result.entries if e.is_control)
    assert controls == ["control: random init (monai:UNet)", "control: random init (unet3d)"]
    assert by_name["bn"].norm_kinds == ["batch"] and by_name["bn"].inserted_affines == []
    assert by_name["in"].norm_kinds == ["instance+affine-inserted"] and by_name["in"].inserted_affines
    assert by_name["control: random init (monai:UNet)"].norm_kinds == ["instance+affine-inserted"]
    for e in result.entries:
        assert e.trained_parameters and 0 < e.norm_parameters < e.trained_parameters
    row = json.loads(json.dumps(result.to_dict()))["entries"][0]
    assert {"norm_kinds", "norm_parameters", "trained_parameters", "inserted_affines"} <= set(row)


def test_an_nnunet_checkpoint_without_norm_op_is_refused_at_inspection_and_in_a_ranking(tmp_path: Path) -> None:
    """nnU-Net plans may name no norm_op: such a network loads, but upload inspection and ranking refuse it."""
    from bnrank.engine.architectures.nnunet import build_nnunet
    from bnrank.engine.errors import CheckpointError
    from bnrank.engine.inspect_isolated import summarise_checkpoint
    from tests.engine.formats import makers

    plans = makers.plans()
    entry = plans["configurations"]["3d_fullres"]["architecture"]
    entry["arch_kwargs"].update(norm_op=None, norm_op_kwargs=None)
    torch.manual_seed(0)
    model = build_nnunet(
        1,
        3,
        network_class_name=entry["network_class_name"],
        arch_kwargs=entry["arch_kwargs"],
        kw_requires_import=entry["_kw_requires_import"],
    )
    path = tmp_path / "checkpoint_final.pth"
    torch.save(makers.nnunet_checkpoint(model, plans), path)
    with pytest.raises(CheckpointError, match=r"nnunet has no normalisation layers \(BatchNorm, InstanceNorm"):
        summarise_checkpoint(path)
    entry = rank_candidates([Candidate("bare", path)], blob_task(), small_config(**CONFIG), control=False).entries[0]
    assert entry.status == "failed" and entry.error == no_norm_message("nnunet")
