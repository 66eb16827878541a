"""Files in the real layouts of the formats people share, built small, plus hostile variants of each.

nnU-Net v2: networks from dynamic-network-architectures saved the way nnUNetTrainer.save_checkpoint saves
them (network_weights, optimizer_state, grad_scaler_state, logging of numpy scalars, current_epoch,
init_args with plans/configuration/fold/dataset_json/device, trainer_name, inference_allowed_mirroring_axes),
beside plans.json and dataset.json in nnU-Net v2's structure. MONAI bundles: configs/metadata.json,
configs/inference.json with network_def, models/model.pt. TorchScript: `torch.jit.trace` + `torch.jit.save`.
"""

from __future__ import annotations

import copy
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks import nets
from torch import nn

from bnrank.engine.architectures import build_model
from bnrank.engine.architectures.nnunet import build_nnunet

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
TRAINER_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def arch_entry(network: str = PLAIN, features: tuple[int, ...] = (4, 8, 16)) -> dict[str, Any]:
    """A 3d_fullres architecture entry as nnU-Net's planners write it, at a few features per stage."""
    n = len(features)
    blocks = "n_blocks_per_stage" if network == RESENC else "n_conv_per_stage"
    return {
        "network_class_name": network,
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(features),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
            blocks: [1 if network == RESENC else 2] * n,
            "n_conv_per_stage_decoder": [1] * (n - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def plans(network: str = PLAIN, features: tuple[int, ...] = (4, 8, 16)) -> dict[str, Any]:
    """plans.json in nnU-Net v2's structure (nnUNetPlans from ExperimentPlanner), one 3D configuration."""
    return {
        "dataset_name": "Dataset042_Tiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [2.0, 1.5, 1.5],
        "original_median_shape_after_transp": [20, 20, 20],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [16, 16, 16],
                "median_image_size_in_voxels": [20.0, 20.0, 20.0],
                "spacing": [2.0, 1.5, 1.5],
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0},
                "architecture": arch_entry(network, features),
                "batch_dice": True,
            },
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 1500.0,
                "mean": 80.0,
                "median": 75.0,
                "min": -1000.0,
                "percentile_00_5": -50.0,
                "percentile_99_5": 300.0,
                "std": 40.0,
            }
        },
    }


def dataset_json(n_classes: int = 3) -> dict[str, Any]:
    labels = {"background": 0, **{f"organ{i}": i for i in range(1, n_classes)}}
    return {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 4, "file_ending": ".nii.gz"}


def nnunet_network(network: str = PLAIN, n_classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    entry = arch_entry(network)
    return build_nnunet(
        1,
        n_classes,
        network_class_name=entry["network_class_name"],
        arch_kwargs=entry["arch_kwargs"],
        kw_requires_import=entry["_kw_requires_import"],
    )


def nnunet_checkpoint(model: nn.Module, the_plans: dict[str, Any], extra: dict[str, Any] | None = None) -> dict:
    """What nnUNetTrainer.save_checkpoint writes. The optimizer state has SGD's structure (nnU-Net trains with
    SGD, momentum 0.99, Nesterov), written out rather than stepped: torch.optim's first use costs seconds."""
    params = list(model.parameters())
    optimizer_state = {
        "state": {i: {"momentum_buffer": torch.randn_like(p)} for i, p in enumerate(params)},
        "param_groups": [
            {
                "lr": 0.01,
                "momentum": 0.99,
                "dampening": 0,
                "weight_decay": 3e-05,
                "nesterov": True,
                "maximize": False,
                "foreach": None,
                "differentiable": False,
                "fused": None,
                "params": list(range(len(params))),
            }
        ],
    }
    ckpt = {
        "network_weights": model.state_dict(),
        "optimizer_state": optimizer_state,
        "grad_scaler_state": None,
        "logging": {
            "mean_fg_dice": [np.float64(0.41), np.float64(0.57)],
            "ema_fg_dice": [np.float64(0.41), np.float64(0.43)],
            "dice_per_class_or_region": [[np.float64(0.5), np.float64(0.3)]],
            "train_losses": [np.float32(-0.2), np.float32(-0.4)],
            "val_losses": [np.float32(-0.1), np.float32(-0.3)],
            "lrs": [0.01, 0.0099],
            "epoch_start_timestamps": [1.0, 2.0],
            "epoch_end_timestamps": [1.5, 2.5],
        },
        "_best_ema": np.float64(0.43),
        "current_epoch": 2,
        "init_args": {
            "plans": the_plans,
            "configuration": "3d_fullres",
            "fold": 0,
            "dataset_json": dataset_json(),
            "device": torch.device("cpu"),
        },
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    ckpt.update(extra or {})
    return ckpt


def write_nnunet_folder(
    root: Path, network: str = PLAIN, *, the_plans: dict[str, Any] | None = None, seed: int = 0
) -> tuple[Path, nn.Module]:
    """A trained-model folder as nnU-Net writes it: <trainer__plans__config>/{plans,dataset}.json + fold_0."""
    the_plans = the_plans or plans(network)
    model = nnunet_network(network, seed=seed)
    folder = root / "Dataset042_Tiny" / TRAINER_FOLDER
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(the_plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset_json(), indent=2))
    (folder / "dataset_fingerprint.json").write_text(json.dumps({"spacings": [[2.0, 1.5, 1.5]]}))
    torch.save(nnunet_checkpoint(model, plans(network)), folder / "fold_0" / "checkpoint_final.pth")
    (folder / "fold_0" / "debug.json").write_text("{}")
    return folder, model


def zip_folder(folder: Path, out: Path, base: Path | None = None) -> Path:
    """Zip a folder the way nnU-Net's export does (paths relative to `base`, deflated)."""
    base = base or folder.parent
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(base).as_posix())
    return out


def write_bundle(root: Path, network_def: dict[str, Any], *, seed: int = 0, name: str = "tiny_bundle") -> Path:
    """A MONAI bundle folder: configs/metadata.json, configs/inference.json, models/model.pt."""
    torch.manual_seed(seed)
    literal = {k: 3 if v == "@spatial_dims" else v for k, v in network_def.items()}  # the config's own reference
    model = getattr(nets, literal.pop("_target_"))(**literal)  # MONAI's class itself, as the bundle's author did
    bundle = root / name
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "metadata.json").write_text(
        json.dumps(
            {
                "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
                "version": "0.1.0",
                "name": name,
                "monai_version": "1.4.0",
                "network_data_format": {
                    "inputs": {
                        "image": {
                            "type": "image",
                            "format": "hounsfield",
                            "num_channels": 1,
                            "spatial_shape": [32, 32, 32],
                            "dtype": "float32",
                        }
                    },
                    "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2}},
                },
            }
        )
    )
    inference = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "spatial_dims": 3,
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1},
    }
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    torch.save(model.state_dict(), bundle / "models" / "model.pt")
    return bundle


SEGRESNET_DEF = {
    "_target_": "SegResNet",
    "spatial_dims": "@spatial_dims",
    "in_channels": 1,
    "out_channels": 2,
    "init_filters": 4,
    "blocks_down": [1, 1, 1],
    "blocks_up": [1, 1],
    "norm": ["GROUP", {"num_groups": 2}],
}
SWINUNETR_DEF = {
    "_target_": "SwinUNETR",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "feature_size": 12,
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 1, 1, 1],
}


def write_torchscript(path: Path, width: int = 4, seed: int = 0) -> tuple[Path, nn.Module]:
    """A Models Genesis unet3d at a small width, traced and saved as a TorchScript archive."""
    torch.manual_seed(seed)
    model = build_model("unet3d", width=width, in_channels=1, out_channels=2).eval()
    traced = torch.jit.trace(model, torch.zeros(1, 1, 16, 16, 16))
    torch.jit.save(traced, str(path))
    return path, model


def foreign_torchscript(path: Path) -> Path:
    """A TorchScript archive of a network no registered architecture has."""
    model = nn.Sequential(nn.Conv3d(1, 3, 3), nn.InstanceNorm3d(3, affine=True), nn.Conv3d(3, 2, 1)).eval()
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 1, 8, 8, 8)), str(path))
    return path


# ------------------------------------------------------------------------------------------- hostile


def torchscript_with_writing_code(path: Path, marker: Path, width: int = 4) -> Path:
    """A valid archive whose code/ files are replaced by Python that writes `marker` if anything ran them,
    and whose data.pkl names builtins.exec with that code: it is refused, and nothing runs."""
    write_torchscript(path, width)
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    rewritten = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(rewritten, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if "/code/" in info.filename and info.filename.endswith(".py"):
                data = payload.encode() + data
            if info.filename.endswith("/data.pkl"):
                data = _exec_pickle(payload)
            dst.writestr(info, data)
    os.replace(rewritten, path)
    return path


def _exec_pickle(code: str) -> bytes:
    """A pickle whose loading would call builtins.exec(code)."""

    class Exec:
        def __reduce__(self):
            return (exec, (code,))

    import pickle

    return pickle.dumps(Exec(), protocol=2)


class SystemCall:
    """Pickles as os.system(command): loading it with a plain unpickler would run the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def reduce_checkpoint(path: Path, marker: Path) -> Path:
    """checkpoint_final.pth in nnU-Net's structure whose log carries a __reduce__ payload touching `marker`."""
    model = nnunet_network()
    ckpt = nnunet_checkpoint(model, plans(), {"logging": {"payload": SystemCall(f"touch {marker}")}})
    torch.save(ckpt, path)
    return path


def plans_naming(target: str, field: str = "nonlin") -> dict[str, Any]:
    """plans.json whose architecture entry names `target` for `field` (or the network class)."""
    bad = copy.deepcopy(plans())
    entry = bad["configurations"]["3d_fullres"]["architecture"]
    if field == "network_class_name":
        entry["network_class_name"] = target
    else:
        entry["arch_kwargs"][field] = target
    return bad


def zip_with_entries(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def zip_bomb(path: Path, inflated: int = 64 * 1024**2) -> Path:
    """A zip whose one member inflates ~1000-fold: plans.json beside a checkpoint of zeros."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr(f"{TRAINER_FOLDER}/plans.json", json.dumps(plans()))
        archive.writestr(f"{TRAINER_FOLDER}/dataset.json", json.dumps(dataset_json()))
        with archive.open(f"{TRAINER_FOLDER}/fold_0/checkpoint_final.pth", "w") as member:
            chunk = bytes(1024**2)
            for _ in range(inflated // len(chunk)):
                member.write(chunk)
    return path


def symlink_zip(path: Path) -> Path:
    """A zip whose entry is a symbolic link to /etc/passwd."""
    info = zipfile.ZipInfo(f"{TRAINER_FOLDER}/plans.json")
    info.external_attr = 0o120777 << 16
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(info, "/etc/passwd")
    return path


def state_bytes(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()
