"""The normalisation layers of a network, and the identity affines norm-only evaluation inserts after them.

The thesis freezes the kernels and trains only BatchNorm's per-channel scale γ and shift β. The idea does
not depend on BatchNorm: every normalisation (BatchNorm, InstanceNorm, GroupNorm, LayerNorm) standardises
its input and then multiplies by γ, so γ is the amplitude each feature contributes whatever computed the
statistics. Most shared 3D segmentation weights have no BatchNorm (nnU-Net: InstanceNorm with affine;
SegResNet: GroupNorm; UNETR/SwinUNETR: LayerNorm and InstanceNorm; many TorchScript releases:
InstanceNorm without affine), so this module finds all four kinds.

A normalisation without an affine (``nn.InstanceNorm3d``'s default, ``LayerNorm(elementwise_affine=False)``)
has no γ to train or read. :func:`insert_affines` wraps such a layer in :class:`InsertedAffine`, an
identity-initialised per-channel (LayerNorm: per-feature) scale and shift, so the wrapped network computes
exactly what it did until training moves them. It is called after a candidate's weights are loaded, so the
state-dict keys the checkpoint is matched against never change, and the candidate's own tensors are untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

KINDS = ("batch", "instance", "group", "layer")
"""Normalisation kinds, in the order they are listed; an inserted affine adds ``+affine-inserted``."""
INSERTED = "+affine-inserted"
KIND_NAMES = {"batch": "BatchNorm", "instance": "InstanceNorm", "group": "GroupNorm", "layer": "LayerNorm"}
ALL_NAMES = "BatchNorm, InstanceNorm, GroupNorm or LayerNorm"


def no_norm_message(name: str) -> str:
    """The one refusal for a network with no normalisation at all (ranking, upload inspection, the CLI)."""
    return (
        f"{name} has no normalisation layers ({ALL_NAMES}): norm-only evaluation trains the γ/β that follow "
        "a normalisation, so there is nothing to evaluate with frozen kernels"
    )


def norm_kind(module: nn.Module) -> str | None:
    """``batch``, ``instance``, ``group`` or ``layer`` for a normalisation layer; None for anything else."""
    if isinstance(module, InsertedAffine):
        return module.kind
    if isinstance(module, _BatchNorm):
        return "batch"
    if isinstance(module, _InstanceNorm):
        return "instance"
    if isinstance(module, nn.GroupNorm):
        return "group"
    if isinstance(module, nn.LayerNorm):
        return "layer"
    return None


def own_affine(module: nn.Module) -> bool:
    """Whether a normalisation layer carries its own γ (BatchNorm/InstanceNorm/GroupNorm ``affine``, LayerNorm
    ``elementwise_affine``): the ``weight`` parameter is there."""
    return isinstance(getattr(module, "weight", None), nn.Parameter)


def features(module: nn.Module) -> tuple[int, ...]:
    """The shape of one γ of a normalisation layer: (channels,) for BN/IN/GN, ``normalized_shape`` for LN."""
    kind = norm_kind(module)
    if kind == "layer":
        return tuple(module.normalized_shape)
    if kind == "group":
        return (module.num_channels,)
    return (module.num_features,)


class InsertedAffine(nn.Module):
    """A normalisation without affine, followed by an identity-initialised scale ``weight`` and shift ``bias``.

    γ and β are per channel (axis 1 of a channels-first tensor) for BatchNorm, InstanceNorm and GroupNorm, and
    per feature over ``normalized_shape`` (the trailing axes) for LayerNorm, exactly where the layer's own affine
    would have been. It exists for the evaluation only: the checkpoint has no such tensors.
    """

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        kind = norm_kind(norm)
        if kind is None or isinstance(norm, InsertedAffine):
            raise TypeError(f"cannot insert an affine after {type(norm).__name__}")
        self.norm = norm
        self.kind = kind
        ref = next(iter(norm.buffers()), None)
        device = ref.device if ref is not None else None
        shape = features(norm)
        self.weight = nn.Parameter(torch.ones(shape, device=device))
        self.bias = nn.Parameter(torch.zeros(shape, device=device))

    def reset_parameters(self) -> None:
        """Back to the identity (γ = 1, β = 0)."""
        with torch.no_grad():
            self.weight.fill_(1.0)
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        if self.kind == "layer":
            return y * self.weight + self.bias
        view = (1, -1) + (1,) * (y.dim() - 2)
        return y * self.weight.view(view) + self.bias.view(view)


@dataclass
class NormLayer:
    """A normalisation layer as norm-only evaluation sees it: the module owning γ/β and what it is."""

    name: str
    module: nn.Module
    kind: str
    inserted: bool

    @property
    def label(self) -> str:
        """The kind as reported: ``instance``, or ``instance+affine-inserted`` where the γ were inserted."""
        return self.kind + (INSERTED if self.inserted else "")

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def bias(self) -> nn.Parameter | None:
        bias = getattr(self.module, "bias", None)
        return bias if isinstance(bias, nn.Parameter) else None

    @property
    def norm(self) -> nn.Module:
        """The normalisation itself (inside the wrapper where an affine was inserted): its running statistics."""
        return self.module.norm if self.inserted else self.module


def _walk(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """Every normalisation of ``model`` once, in module order: a wrapper stands for the norm it wraps."""
    inside: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in inside:
            continue
        kind = norm_kind(module)
        if kind is None:
            continue
        if isinstance(module, InsertedAffine):
            inside.add(id(module.norm))
        yield name, module, kind


def norm_layers(model: nn.Module) -> Iterator[NormLayer]:
    """Normalisation layers with γ (their own, or an inserted one), in module order; those without are skipped."""
    for name, module, kind in _walk(model):
        if isinstance(module, InsertedAffine):
            yield NormLayer(name, module, kind, inserted=True)
        elif own_affine(module):
            yield NormLayer(name, module, kind, inserted=False)


def without_affine(model: nn.Module) -> list[tuple[str, str]]:
    """(name, kind) of every normalisation that has no γ yet (neither its own nor an inserted one)."""
    return [
        (name, kind)
        for name, module, kind in _walk(model)
        if not isinstance(module, InsertedAffine) and not own_affine(module)
    ]


def has_norm(model: nn.Module) -> bool:
    """Whether ``model`` has any normalisation layer, with or without affine."""
    return next(_walk(model), None) is not None


def insert_affines(model: nn.Module) -> list[str]:
    """Wrap every normalisation without affine in :class:`InsertedAffine`, in place; returns the wrapped names.

    Call it after the weights are loaded (the wrapper moves the norm one level down, ``x`` → ``x.norm``, and adds
    ``x.weight``/``x.bias``). Already wrapped layers are left alone, so a second call inserts nothing.
    """
    names = [name for name, _ in without_affine(model)]
    modules = dict(model.named_modules())
    if "" in names:
        raise TypeError("the model itself is a normalisation layer; there is no network to evaluate")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name], child, InsertedAffine(modules[name]))
    return names


def kinds_of(layers: list[NormLayer]) -> list[str]:
    """The distinct labels of ``layers`` in KINDS order (own affine before inserted within a kind)."""
    labels = {layer.label for layer in layers}
    return [label for kind in KINDS for label in (kind, kind + INSERTED) if label in labels]
