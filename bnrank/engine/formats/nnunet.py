"""nnU-Net v2 trained models: where the pieces are, and what the plans say about the network and the data.

A trained-model folder (or the zip `nnUNetv2_export_model_to_zip` writes) looks like
``<Trainer>__<Plans>__<configuration>/{plans.json, dataset.json, fold_N/checkpoint_final.pth}``; a bare
``checkpoint_final.pth`` carries the same plans and dataset.json in its ``init_args``. The checkpoint holds
``network_weights`` next to optimizer and grad-scaler state, a training log of numpy scalars, the epoch and
``init_args``; only ``network_weights`` becomes the candidate, the rest is read (safely) and ignored.

The network itself is described by the configuration's ``architecture`` entry (nnU-Net ≥ 2.4) or, in older
plans, by ``UNet_class_name`` and friends; both become the build options of the registered ``nnunet``
architecture (`bnrank.engine.architectures.nnunet`), which resolves every class name through its allow-list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bnrank.engine.architectures.nnunet import constructor_kwargs, input_multiple
from bnrank.engine.errors import CorruptCheckpointError
from bnrank.engine.formats.zips import ModelTree

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
_FOLD = re.compile(r"(?:^|/)fold_(\w+)/(checkpoint_final|checkpoint_best)\.pth$")
_PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
_LEGACY_CLASSES = {
    "PlainConvUNet": _PLAIN_UNET,
    "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}


@dataclass
class NNUNetLayout:
    """Where an nnU-Net model's files are in a folder or zip, and which checkpoint was chosen."""

    plans: str
    dataset: str
    checkpoint: str
    configuration: str | None
    other_checkpoints: list[str] = field(default_factory=list)


def find_layout(tree: ModelTree) -> NNUNetLayout | None:
    """The model inside `tree`, or None when it holds no plans.json beside a fold_N checkpoint.

    Several trained configurations in one zip (an export of a whole dataset) are refused with their names:
    one candidate is one network. Of several folds the lowest is used (checkpoint_final before _best).
    """
    roots: dict[str, list[tuple[str, str, str]]] = {}
    for name in tree.names():
        match = _FOLD.search(name)
        if match:
            root = name[: match.start()].lstrip("/")
            roots.setdefault(root, []).append((match.group(1), match.group(2), name))
    roots = {root: ckpts for root, ckpts in roots.items() if _join(root, "plans.json") in tree.members}
    if not roots:
        return None
    if len(roots) > 1:
        raise CorruptCheckpointError(
            f"{tree.label}: holds {len(roots)} trained nnU-Net models ({', '.join(sorted(roots))}); "
            "upload one model folder per candidate"
        )
    root, ckpts = next(iter(roots.items()))
    dataset = _join(root, "dataset.json")
    if dataset not in tree.members:
        raise CorruptCheckpointError(f"{tree.label}: nnU-Net model folder {root or '.'} has no dataset.json")
    ckpts.sort(key=lambda c: (c[0] != "all", int(c[0]) if c[0].isdigit() else 99, c[1] != "checkpoint_final"))
    chosen = ckpts[0][2]
    configuration = root.rsplit("/", 1)[-1].split("__")[-1] if "__" in root else None
    return NNUNetLayout(_join(root, "plans.json"), dataset, chosen, configuration, [c[2] for c in ckpts[1:]])


def _join(root: str, name: str) -> str:
    return f"{root}/{name}" if root else name


def is_nnunet_checkpoint(obj: Any) -> bool:
    """A loaded checkpoint that nnU-Net v2's trainer wrote (its init_args carry the plans)."""
    return (
        isinstance(obj, Mapping)
        and isinstance(obj.get("network_weights"), Mapping)
        and isinstance(obj.get("init_args"), Mapping)
        and isinstance(obj["init_args"].get("plans"), Mapping)
    )


def configuration_of(plans: Mapping[str, Any], name: str | None) -> tuple[str, dict[str, Any]]:
    """The named configuration with `inherits_from` applied; without a name, the plans' only 3D one."""
    configs = plans.get("configurations")
    if not isinstance(configs, Mapping) or not configs:
        raise CorruptCheckpointError("nnU-Net plans have no 'configurations'")
    if name is None:
        threes = [k for k, v in configs.items() if isinstance(v, Mapping) and k.startswith("3d")]
        if len(threes) != 1:
            raise CorruptCheckpointError(
                f"nnU-Net plans hold configurations {', '.join(map(str, configs))} and nothing says which one "
                "these weights were trained with"
            )
        name = threes[0]
    chain: list[Mapping[str, Any]] = []
    current: str | None = name
    while current is not None:
        config = configs.get(current)
        if not isinstance(config, Mapping):
            raise CorruptCheckpointError(f"nnU-Net plans have no configuration {current!r}")
        if len(chain) > len(configs):
            raise CorruptCheckpointError(f"nnU-Net plans: configuration {name!r} inherits in a cycle")
        chain.append(config)
        parent = config.get("inherits_from")
        current = parent if isinstance(parent, str) else None
    merged: dict[str, Any] = {}
    for config in reversed(chain):
        merged.update(config)
    return name, merged


def architecture_entry(plans: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration's architecture entry; older v2 plans (before 2.4) are translated to that form."""
    entry = config.get("architecture")
    if isinstance(entry, Mapping):
        return {
            "network_class_name": entry.get("network_class_name"),
            "arch_kwargs": dict(entry.get("arch_kwargs") or {}),
            "kw_requires_import": list(entry.get("_kw_requires_import") or ()),
        }
    kernels = config.get("conv_kernel_sizes")
    if not isinstance(kernels, list) or "UNet_class_name" not in config:
        raise CorruptCheckpointError("nnU-Net plans: the configuration has neither an 'architecture' entry nor UNet_*")
    n = len(kernels)
    base, most = config.get("UNet_base_num_features", 32), config.get("unet_max_num_features", 320)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (base, most)):
        raise CorruptCheckpointError("nnU-Net plans: UNet_base_num_features / unet_max_num_features are not integers")
    name = str(config["UNet_class_name"])
    blocks = "n_blocks_per_stage" if name == "ResidualEncoderUNet" else "n_conv_per_stage"
    return {
        "network_class_name": _LEGACY_CLASSES.get(name, name),
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": [min(most, base * 2**i) for i in range(min(n, 32))],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": kernels,
            "strides": config.get("pool_op_kernel_sizes"),
            blocks: config.get("n_conv_per_stage_encoder"),
            "n_conv_per_stage_decoder": config.get("n_conv_per_stage_decoder"),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _plain(value: Any) -> Any:
    """JSON-safe copy (numpy scalars in a checkpoint's plans become Python numbers)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def describe(
    plans: Mapping[str, Any], dataset: Mapping[str, Any] | None, configuration: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(build options for the `nnunet` architecture, what the load report tells about the model).

    The build options are checked here (allow-lists, bounds) so a bad plans file is refused before any
    tensor is read. The report part holds the configuration's data defaults: target spacing, patch size,
    intensity normalisation (with the CT statistics it needs), and the dataset's channels and labels.
    """
    name, config = configuration_of(plans, configuration)
    entry = architecture_entry(plans, config)
    checked = constructor_kwargs(entry["network_class_name"], entry["arch_kwargs"], entry["kw_requires_import"])
    build = _plain(entry)
    defaults = {
        "spacing": config.get("spacing"),
        "patch_size": config.get("patch_size"),
        "input_multiple_of": list(input_multiple(checked["strides"])),
        "normalization_schemes": config.get("normalization_schemes"),
        "use_mask_for_norm": config.get("use_mask_for_norm"),
        "transpose_forward": plans.get("transpose_forward"),
        "foreground_intensity_properties_per_channel": plans.get("foreground_intensity_properties_per_channel"),
    }
    source = {
        "configuration": name,
        "plans_name": plans.get("plans_name"),
        "dataset_name": plans.get("dataset_name"),
        "defaults": _plain(defaults),
        "channel_names": _plain((dataset or {}).get("channel_names") or (dataset or {}).get("modality")),
        "labels": _plain((dataset or {}).get("labels")),
    }
    return build, source
