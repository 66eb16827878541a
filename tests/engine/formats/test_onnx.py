"""ONNX checkpoints: exports of every registered architecture and of an nnU-Net network convert to modules that
compute what the originals do, rank like their original weights, and hostile graphs are refused unbuilt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bnrank.engine.checkpoints import read_state_dict, save_weights, sniff_format
from bnrank.engine.errors import CheckpointTooLargeError, CorruptCheckpointError, UnsafeCheckpointError
from bnrank.engine.fitting import load_checkpoint
from bnrank.engine.norms import norm_layers, without_affine
from bnrank.engine.ranking import Candidate, evaluate_candidate, rank_candidates
from tests.engine.tiny import blob_task, small_config

from . import onnx_makers as om

NETWORKS = ["unet3d", "medicalnet_resnet10", "monai_unet", "monai_basicunet", "nnunet"]


@pytest.mark.parametrize("name", NETWORKS)
def test_an_export_keeping_its_norms_computes_what_the_original_does(tmp_path: Path, name: str) -> None:
    original = om.network(name)
    path = om.export(original, tmp_path / "model")  # no suffix: recognised from the bytes
    assert sniff_format(path) == "onnx"
    converted, report = load_checkpoint(path)
    assert report.format == "onnx" and report.architecture.startswith("onnx:")
    assert report.matched_fraction == 1.0 and not report.missing and not report.unexpected
    conversion = report.source["conversion"]
    assert conversion["head"] and conversion["norms"], conversion
    assert report.build_kwargs == {"in_channels": 1, "out_channels": 2}
    x = torch.randn(2, 1, 32, 16, 32)  # not the export's size: the spatial axes are dynamic
    for train in (True, False):
        original.train(train)
        converted.train(train)
        with torch.no_grad():
            expected, got = original(x), converted(x)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_norms_are_torch_layers_and_identity_instance_affines_are_left_for_insertion(tmp_path: Path) -> None:
    converted, _ = load_checkpoint(om.export(om.network("nnunet"), tmp_path / "nnunet.onnx"))
    kinds = {type(layer.module).__name__ for layer in norm_layers(converted)}
    unset = without_affine(converted)  # nnU-Net's fresh InstanceNorm affines are exactly 1 and 0
    assert unset and all(kind == "instance" for _, kind in unset), (kinds, unset)
    converted, _ = load_checkpoint(om.export(om.network("unet3d"), tmp_path / "unet3d.onnx"))
    assert {layer.kind for layer in norm_layers(converted)} == {"batch"}


def test_the_head_is_resized_for_the_task_and_reported(tmp_path: Path) -> None:
    path = om.export(om.network("unet3d"), tmp_path / "unet3d.onnx")
    model, report = load_checkpoint(path, out_channels=3)
    (head,) = report.source["conversion"]["head"]
    assert report.head_reinitialised == [f"layers.{head}.weight", f"layers.{head}.bias"]
    assert model(torch.zeros(1, 1, 16, 16, 16)).shape[1] == 3


def test_a_head_named_by_the_user_is_that_convolution_and_what_is_computed_from_it(tmp_path: Path) -> None:
    from bnrank.engine.errors import ArchitectureMismatchError
    from bnrank.engine.formats.onnx_network import HeadNameError

    original = om.network("unet3d")
    path = om.export(original, tmp_path / "u.onnx")
    _, default = load_checkpoint(path)
    heads = set()
    for name in ("up_tr64.ops.1.conv1", "up_tr64.ops.1.conv1.weight", "/up_tr64/ops/ops.1/conv1/Conv"):
        _, report = load_checkpoint(path, head=name, out_channels=3)
        conversion = report.source["conversion"]
        assert conversion["head"] == ["out_tr_final_conv", "up_tr64_ops_1_bn1", "up_tr64_ops_1_conv1"], name
        assert "named by the user" in conversion["head_rule"]
        assert report.head_reinitialised == ["layers.out_tr_final_conv.weight", "layers.out_tr_final_conv.bias"]
        heads.add(report.architecture)
    assert len(heads) == 1 and default.architecture not in heads  # another head, another evaluation
    with pytest.raises(HeadNameError, match=r"in graph order: .*up_tr64\.up_conv, .*out_tr\.final_conv \("):
        load_checkpoint(path, head="decoder.seg")
    weights = save_weights(original, tmp_path / "u.safetensors")
    with pytest.raises(ArchitectureMismatchError, match="only a converted graph"):
        load_checkpoint(weights, head="out_tr.final_conv")


def test_onnx_export_ranks_like_its_original_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = blob_task()
    config = small_config(max_steps=4, val_every=2)
    original = om.network("unet3d", seed=1)
    weights = save_weights(original, tmp_path / "unet3d.safetensors")
    exported = om.export(original, tmp_path / "unet3d.onnx")
    a = evaluate_candidate(Candidate("pt", weights), task, config)
    b = evaluate_candidate(Candidate("onnx", exported), task, config)
    assert a.status == b.status == "ok", (a.error, b.error)
    assert b.score == pytest.approx(a.score, abs=0.02)
    assert b.norm_kinds == a.norm_kinds == ["batch"]
    from bnrank.cli.table import print_sources

    print_sources([a, b])  # what `bnrank rank` prints under its table: every format, the conversion report
    printed = capsys.readouterr().out
    assert "formats: safetensors ×1, onnx ×1" in printed
    assert "conversion of onnx: ONNX graph, op set 17" in printed and "conversion of pt" not in printed


def test_an_nnunet_export_starts_norm_only_training_from_its_model_folders_network(tmp_path: Path) -> None:
    """The deep-supervision seg layers the forward never runs are not re-initialised: were they reset first, the
    folder's output layer would start from another point of the seed's stream than the export's only one."""
    from bnrank.engine.bn_only import norm_only_setup
    from bnrank.engine.ranking import build_candidate

    from . import makers as mk

    task = blob_task()
    folder, original = mk.write_nnunet_folder(tmp_path / "results", seed=1)
    exported = om.export(original, tmp_path / "nnunet.onnx")
    x = torch.randn(2, 1, 16, 16, 16)
    outputs, trained = [], []
    for label, path in (("folder", folder), ("onnx", exported)):
        model, arch, _ = build_candidate(Candidate(label, path), task, seed=0)
        params, _, _, info = norm_only_setup(model, arch, seed=0)
        trained.append((sum(p.numel() for p in params), info.head_parameters))
        with torch.no_grad():
            outputs.append(model.train()(x))
    assert trained[0] == trained[1], trained
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)


def test_a_ranking_gives_an_onnx_graph_its_own_random_init_control(tmp_path: Path) -> None:
    exported = om.export(om.network("monai_unet", seed=2), tmp_path / "unet.onnx")
    entries = rank_candidates([Candidate("onnx", exported)], blob_task(), small_config(max_steps=2, val_every=2))
    control = next(e for e in entries.entries if e.is_control)
    candidate = next(e for e in entries.entries if not e.is_control)
    assert candidate.status == control.status == "ok", (candidate.error, control.error)
    assert control.architecture == candidate.architecture and control.architecture.startswith("onnx:")


def test_a_folded_inference_export_is_refused_with_the_reason(tmp_path: Path) -> None:
    folded = om.export(om.network("unet3d"), tmp_path / "folded.onnx", keep_norms=False)
    _, report = load_checkpoint(folded)  # inspection still works
    assert report.source["conversion"]["norms"] == {}
    entry = evaluate_candidate(Candidate("folded", folded), blob_task(), small_config(max_steps=2))
    assert entry.status == "failed"
    assert "no normalisation" in entry.error and "TrainingMode.TRAINING" in entry.error
    from bnrank.engine.errors import CheckpointError
    from bnrank.engine.inspect_isolated import summarise_checkpoint

    with pytest.raises(CheckpointError, match=r"folds every BatchNorm.*TrainingMode\.TRAINING"):
        summarise_checkpoint(folded)  # what an upload's inspection answers (422), with the same reason


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (om.unknown_operator, UnsafeCheckpointError, "Einsum"),
        (lambda p: om.external_data(p, "../../../etc/passwd"), UnsafeCheckpointError, "external file"),
        (om.huge_initializer, CheckpointTooLargeError, "1,000,000,000,000 elements"),
        (om.custom_domain, UnsafeCheckpointError, "com.example.shell"),
    ],
)
def test_hostile_graphs_are_refused_before_anything_is_built(tmp_path: Path, make, error, words) -> None:
    path = make(tmp_path / "hostile.onnx")
    with pytest.raises(error, match=words):
        read_state_dict(path)


def test_a_truncated_onnx_file_is_corrupt(tmp_path: Path) -> None:
    path = om.export(om.network("unet3d"), tmp_path / "unet3d.onnx")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError):
        read_state_dict(path)


def test_alchemy_runs_on_an_onnx_graph_whose_conv_norm_pairs_are_recovered(tmp_path: Path) -> None:
    from bnrank.engine.alchemy import AlchemyConfig, AlchemyError, run_alchemy
    from bnrank.engine.alchemy.pairs import find_conv_bn_pairs
    from bnrank.engine.recognition import resolve_architecture

    task = blob_task()
    model, report = load_checkpoint(om.export(om.network("unet3d"), tmp_path / "u.onnx"), out_channels=3)
    pairs, skipped = find_conv_bn_pairs(model, (1, 1, 16, 16, 16))
    assert len(pairs) == report.source["conversion"]["norms"]["BatchNormalization"] and not skipped
    arch, _ = resolve_architecture({}, report.architecture)
    options = AlchemyConfig(fraction=0.1, identify_steps=2)
    result = run_alchemy(model, arch, task, small_config(max_steps=2, val_every=2), options)
    assert result.modification["reinitialised"] > 0 and 0.0 <= result.score <= 1.0
    folded, report = load_checkpoint(om.export(om.network("unet3d"), tmp_path / "f.onnx", keep_norms=False))
    arch, _ = resolve_architecture({}, report.architecture)
    with pytest.raises(AlchemyError, match="normalisation"):
        run_alchemy(folded, arch, task, small_config(max_steps=2, val_every=2))


def test_a_process_that_never_read_the_graph_learns_it_from_a_file(tmp_path: Path, monkeypatch) -> None:
    from bnrank.engine import recognition
    from bnrank.engine.errors import UnknownArchitectureError
    from bnrank.engine.fitting import remember_graph

    path = om.export(om.network("unet3d"), tmp_path / "u.onnx")
    name = remember_graph(path)
    monkeypatch.setattr(recognition, "_DESCRIBED", {})  # a fresh worker process
    with pytest.raises(UnknownArchitectureError):
        recognition.resolve_architecture({}, name)
    assert remember_graph(path) == name
    arch, _ = recognition.resolve_architecture({}, name)
    assert arch.name == name
