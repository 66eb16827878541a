"""nnU-Net v2 models in their real layouts: folder, zip and bare checkpoint_final.pth; hostile plans and pickles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bnrank.engine.architectures.nnunet import NNUNetPlansError
from bnrank.engine.checkpoints import read_state_dict
from bnrank.engine.errors import (
    ArchitectureMismatchError,
    CorruptCheckpointError,
    TrainingError,
    UnsafeCheckpointError,
)
from bnrank.engine.fitting import load_checkpoint

from . import makers as mk


def _form(folder: Path, form: str, tmp_path: Path) -> Path:
    if form == "folder":
        return folder
    if form == "zip":
        return mk.zip_folder(folder.parent, tmp_path / "model.zip", base=folder.parent.parent)
    return folder / "fold_0" / "checkpoint_final.pth"


@pytest.mark.parametrize("network", [mk.PLAIN, mk.RESENC], ids=["PlainConvUNet", "ResidualEncoderUNet"])
@pytest.mark.parametrize("form", ["folder", "zip", "checkpoint_final"])
def test_nnunet_model_loads_weight_for_weight(tmp_path: Path, network: str, form: str) -> None:
    folder, original = mk.write_nnunet_folder(tmp_path / "results", network)
    model, report = load_checkpoint(_form(folder, form, tmp_path))
    assert report.format == "nnunet" and report.architecture == "nnunet"
    assert type(model) is type(original)
    assert report.build_kwargs["network_class_name"] == network
    assert report.build_kwargs["in_channels"] == 1 and report.build_kwargs["out_channels"] == 3
    assert report.matched_fraction == 1.0 and not report.missing and not report.unexpected
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in original.state_dict().items())
    source = report.source
    assert source["configuration"] == "3d_fullres" and source["trainer_name"] == "nnUNetTrainer"
    assert source["defaults"]["spacing"] == [2.0, 1.5, 1.5]
    assert source["defaults"]["patch_size"] == [16, 16, 16]
    assert source["defaults"]["normalization_schemes"] == ["CTNormalization"]
    assert source["labels"] == {"background": 0, "organ1": 1, "organ2": 2}
    if form != "checkpoint_final":
        assert source["checkpoint"].endswith("fold_0/checkpoint_final.pth")


def test_head_is_replaced_for_another_label_set(tmp_path: Path) -> None:
    folder, _ = mk.write_nnunet_folder(tmp_path)
    model, report = load_checkpoint(folder, out_channels=2)
    assert report.head_reinitialised and all(k.startswith("decoder.seg_layers.") for k in report.head_reinitialised)
    assert model(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


def test_input_that_is_no_multiple_of_the_strides_is_refused_by_name(tmp_path: Path) -> None:
    folder, _ = mk.write_nnunet_folder(tmp_path)
    model, report = load_checkpoint(folder)
    assert report.source["defaults"]["input_multiple_of"] == [4, 4, 4]
    assert model(torch.zeros(1, 1, 12, 12, 12)).shape == (1, 3, 12, 12, 12)
    with pytest.raises(TrainingError, match=r"input of size \(18, 18, 18\) is not a multiple of \(4, 4, 4\)"):
        model(torch.zeros(1, 1, 18, 18, 18))


def test_checkpoint_log_holds_numpy_scalars_and_is_read_safely(tmp_path: Path) -> None:
    folder, _ = mk.write_nnunet_folder(tmp_path)
    path = folder / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(Exception, match="Weights only load failed"):  # what made it "need code execution"
        torch.load(path, weights_only=True)
    state, meta = read_state_dict(path)
    assert meta["format"] == "nnunet" and meta["container"] == "network_weights"
    assert "decoder.seg_layers.0.weight" in state


def test_legacy_plans_without_architecture_entry(tmp_path: Path) -> None:
    """nnU-Net 2.0-2.3 plans describe the UNet with UNet_class_name and friends instead."""
    folder, _ = mk.write_nnunet_folder(tmp_path)
    plans = json.loads((folder / "plans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    kwargs = config.pop("architecture")["arch_kwargs"]
    config.update(
        UNet_class_name="PlainConvUNet",
        UNet_base_num_features=4,
        unet_max_num_features=16,
        conv_kernel_sizes=kwargs["kernel_sizes"],
        pool_op_kernel_sizes=kwargs["strides"],
        n_conv_per_stage_encoder=kwargs["n_conv_per_stage"],
        n_conv_per_stage_decoder=kwargs["n_conv_per_stage_decoder"],
    )
    (folder / "plans.json").write_text(json.dumps(plans))
    _, report = load_checkpoint(folder)
    assert report.matched_fraction == 1.0 and not report.unexpected


@pytest.mark.parametrize(
    ("field", "target"),
    [
        ("nonlin", "os.system"),
        ("norm_op", "builtins.eval"),
        ("conv_op", "torch.nn.modules.conv.Conv2d"),
        ("network_class_name", "os.system"),
    ],
)
def test_plans_naming_a_class_outside_the_allow_list_are_refused(tmp_path: Path, field: str, target: str) -> None:
    folder, _ = mk.write_nnunet_folder(tmp_path, the_plans=mk.plans_naming(target, field))
    with pytest.raises(NNUNetPlansError, match=rf"{field} '{target}' is not allowed"):
        load_checkpoint(folder)


def test_plans_with_absurd_sizes_are_refused_before_building(tmp_path: Path) -> None:
    bad = mk.plans()
    bad["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 8, 10**9]
    folder, _ = mk.write_nnunet_folder(tmp_path, the_plans=bad)
    with pytest.raises(NNUNetPlansError, match="features_per_stage entry 1000000000"):
        load_checkpoint(folder)


def test_checkpoint_final_with_reduce_payload_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = mk.reduce_checkpoint(tmp_path / "checkpoint_final.pth", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"needs code execution to load \(it names posix.system\)"):
        load_checkpoint(path)
    folder, _ = mk.write_nnunet_folder(tmp_path / "results")
    shutil.copy(path, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"fold_0/checkpoint_final\.pth: refused"):
        load_checkpoint(mk.zip_folder(folder, tmp_path / "model.zip"))
    assert not marker.exists()


def test_declaring_another_architecture_for_an_nnunet_model_is_refused(tmp_path: Path) -> None:
    folder, _ = mk.write_nnunet_folder(tmp_path)
    with pytest.raises(ArchitectureMismatchError, match="builds its own network"):
        load_checkpoint(folder, architecture="unet3d")


def test_several_models_in_one_zip_are_refused_by_name(tmp_path: Path) -> None:
    a, _ = mk.write_nnunet_folder(tmp_path / "a")
    shutil.copytree(a, a.parent / "nnUNetTrainer__nnUNetPlans__3d_lowres")
    with pytest.raises(CorruptCheckpointError, match="holds 2 trained nnU-Net models"):
        load_checkpoint(mk.zip_folder(a.parent, tmp_path / "all.zip"))
