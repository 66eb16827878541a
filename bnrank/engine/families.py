"""What a state dict that matches no registered architecture most likely is, and what to upload instead.

A bare state dict says nothing about the network that made it, but the key names of the families people share
are distinctive: nnU-Net's ``encoder.stages.…`` / ``decoder.seg_layers.…``, MONAI's ``convInit`` (SegResNet) or
``swinViT`` (SwinUNETR), Models Genesis' ``down_tr64.…``. When recognition fails, the refusal names the family
the keys belong to and what BNRank needs to rebuild it (nnU-Net's plans, a bundle's ``network_def``), instead of
a "closest" architecture that shares nothing. "Closest" lists only architectures sharing at least
`MEANINGFUL_SHARE` of the key names: below that a name in the list says nothing about the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

MEANINGFUL_SHARE = 0.25
"""Jaccard share of key names under which a registered architecture is not worth naming as "closest"."""

ONNX_ADVICE = (
    "export it to ONNX with its normalisation kept (torch.onnx.export(model.train(), x, 'model.onnx', dynamo=False, "
    "training=torch.onnx.TrainingMode.TRAINING, dynamic_axes=...)) and upload the .onnx file"
)
NNUNET_ADVICE = (
    "upload the trained-model folder or its zip (plans.json, dataset.json, fold_N/checkpoint_final.pth), or the "
    "checkpoint_final.pth nnU-Net wrote (it carries its plans)"
)
BUNDLE_ADVICE = (
    "upload the MONAI bundle (configs/metadata.json, configs/inference.json, models/model.pt) or give the network's "
    "definition (network_def, --network-def)"
)

# A key that only this MONAI class's state dict has (default naming of monai.networks.nets).
_MONAI_MARKERS = {
    "SegResNet": ("convInit.conv.weight",),
    "UNETR": ("vit.patch_embedding.",),
    "SwinUNETR": ("swinViT.",),
    "DynUNet": ("input_block.conv1.conv.weight",),
    "BasicUNet": ("conv_0.conv_0.conv.weight",),
    "UNet": ("model.0.conv.unit0.conv.weight", "model.0.unit0.conv.weight"),
    "VNet": ("in_tr.conv_block.conv.weight",),
    "AttentionUnet": ("model.0.conv.0.conv.weight",),
}


def _has(keys: Iterable[str], markers: tuple[str, ...]) -> bool:
    return any(key.startswith(marker) for key in keys for marker in markers)


def identify(keys: Iterable[str]) -> str | None:
    """The family the key names belong to, with what to upload for it; None when they name no known family."""
    keys = list(keys)
    if _has(keys, ("encoder.stages.",)) and _has(keys, ("decoder.seg_layers.", "decoder.stages.")):
        network = "ResidualEncoderUNet" if _has(keys, ("encoder.stem.",)) else "PlainConvUNet"
        return (
            f"the keys are an nnU-Net {network}'s (encoder.stages, decoder.seg_layers), but the file carries no plans "
            f"to rebuild it from: {NNUNET_ADVICE}"
        )
    if _has(keys, ("down_tr64.ops.0.conv1.",)):
        return (
            "the keys are a Models Genesis UNet3D's (down_tr64, up_tr…), but their shapes are not a channel plan "
            "BNRank builds (width, 2·width, … 16·width, 3×3×3 kernels): a different width pattern or kernel; "
            + ONNX_ADVICE
        )
    for name, markers in _MONAI_MARKERS.items():
        if _has(keys, markers):
            return (
                f"the keys are a MONAI {name}'s, in a configuration BNRank cannot tell from the weights alone "
                f"(channels, depth, norm): {BUNDLE_ADVICE}"
            )
    if _has(keys, ("conv1.weight",)) and _has(keys, ("layer1.0.conv1.",)):
        return (
            "the keys are a ResNet's (conv1, layer1…), but not a MedicalNet depth and width BNRank builds "
            f"(resnet10/18/34/50): {ONNX_ADVICE}"
        )
    return None


def unrecognised(shapes: Mapping[str, tuple[int, ...]], closest: list[tuple[str, float]]) -> str:
    """The refusal for a state dict no registered architecture reproduces: its family if known, what to upload,
    and the closest architectures only where they share a meaningful part of the key names."""
    sample = ", ".join(list(shapes)[:4])
    family = identify(shapes)
    near = [(name, share) for name, share in closest if share >= MEANINGFUL_SHARE]
    named = ", ".join(f"{name} ({share:.0%} of key names shared)" for name, share in near)
    if family is not None:
        return f"the checkpoint's keys ({sample}, ...) match no registered architecture: {family}" + (
            f" (closest registered: {named})" if named else ""
        )
    if named:
        return (
            f"the checkpoint's keys ({sample}, ...) match no registered architecture; closest: {named}, so it is "
            "probably a variant of it that BNRank cannot build from the weights. Pass the architecture explicitly, "
            f"a MONAI network definition, or {ONNX_ADVICE}"
        )
    best = f" (best: {closest[0][0]}, {closest[0][1]:.0%})" if closest else ""
    return (
        f"the checkpoint's keys ({sample}, ...) match no registered architecture nor any network family BNRank "
        f"knows: none shares {MEANINGFUL_SHARE:.0%} of its key names{best}. To rank it, {ONNX_ADVICE}; a MONAI "
        "network can also come as its bundle or a network_def"
    )
