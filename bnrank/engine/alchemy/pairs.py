"""Which convolution feeds which normalisation: what modification needs to turn a marked γ into a filter.

A BN channel's γ scales one output filter of the convolution right before it, so re-initialising a
"redundant kernel" means re-drawing that filter. The same holds for InstanceNorm and GroupNorm, whose γ
are per channel too (GroupNorm pools its statistics over a group, but γ_c still scales filter c alone).
LayerNorm's γ are per feature of its trailing ``normalized_shape``: they match a conv's filters only where
that axis *is* the conv's output-channel axis, which a channels-first 3D conv output never is (transformers
permute to channels-last first, so their LayerNorms are not fed by a conv directly); such a LayerNorm is
skipped with a reason that names the kind. The pairing is read off one traced forward pass (the conv whose
output tensor *is* the norm's input), never off layer names, so any registered architecture or MONAI
network works; a norm without a directly feeding convolution is reported as skipped, with the reason,
rather than guessed at. The names (``ConvBNPair``, ``bn``) stay from the BatchNorm-only days.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from bnrank.engine.norms import KIND_NAMES, features, norm_layers


@dataclass
class ConvBNPair:
    """A normalisation layer and the convolution whose output it normalises (``channels`` filters, one per γ)."""

    bn: str
    conv: str
    conv_type: str
    channels: int
    kind: str = "batch"


@dataclass
class SkippedBN:
    """A normalisation no single convolution feeds directly; its marked channels cannot be re-initialised."""

    bn: str
    channels: int
    reason: str
    kind: str = "batch"


def find_conv_bn_pairs(
    model: nn.Module, example: torch.Tensor | Sequence[int]
) -> tuple[list[ConvBNPair], list[SkippedBN]]:
    """Which convolution directly feeds each normalisation layer with γ, from one traced forward pass.

    A norm is paired with a conv when the tensor the norm receives is the very tensor object the conv
    returned and nothing modified it in place in between (its version counter is unchanged), and its γ
    run along that conv's output channels. Anything else (a norm on the raw input, after an activation, a
    concatenation or a view, one called several times with different feeders, one the forward never
    reaches, a LayerNorm over features other than the conv's channels) is returned as skipped with the reason.
    ``example`` is an input tensor or its shape; the pass runs in eval mode without gradients, so
    running statistics are untouched.
    """
    device = next(model.parameters()).device
    if isinstance(example, torch.Tensor):
        x = example
    else:  # a private generator: tracing must not move the global RNG
        x = torch.randn(*example, generator=torch.Generator().manual_seed(0)).to(device)
    names = {id(m): n for n, m in model.named_modules()}
    produced: dict[int, tuple[str, torch.Tensor, int]] = {}
    fed: dict[str, list[str | None]] = {}
    ranks: dict[str, int] = {}
    handles = []

    def conv_hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            produced[id(output)] = (names[id(module)], output, output._version)

    def bn_hook(module: nn.Module, args: Any) -> None:
        t = args[0] if args else None
        rec = produced.get(id(t)) if isinstance(t, torch.Tensor) else None
        ok = rec is not None and rec[1] is t and rec[2] == t._version
        fed.setdefault(names[id(module)], []).append(rec[0] if ok else None)
        if isinstance(t, torch.Tensor):
            ranks[names[id(module)]] = t.dim()

    layers = list(norm_layers(model))
    for _, m in model.named_modules():
        if isinstance(m, _ConvNd):
            handles.append(m.register_forward_hook(conv_hook))
    for layer in layers:  # the norm itself (inside an inserted affine) sees the conv's output
        names[id(layer.norm)] = layer.name
        handles.append(layer.norm.register_forward_pre_hook(bn_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        produced.clear()

    modules = dict(model.named_modules())
    pairs: list[ConvBNPair] = []
    skipped: list[SkippedBN] = []
    for layer in layers:
        name, kind = layer.name, layer.label
        shape = features(layer.norm)
        n = layer.weight.numel()
        feeders = fed.get(name)
        if not feeders:
            skipped.append(SkippedBN(name, n, "not reached by the forward pass", kind))
            continue
        if len(set(feeders)) > 1:
            skipped.append(SkippedBN(name, n, "called several times with different inputs", kind))
            continue
        conv_name = feeders[0]
        if conv_name is None:
            skipped.append(SkippedBN(name, n, "its input does not come straight from a conv", kind))
            continue
        conv = modules[conv_name]
        if layer.kind == "layer" and not (len(shape) == 1 and ranks.get(name) == 2):
            skipped.append(
                SkippedBN(
                    name,
                    n,
                    f"{KIND_NAMES['layer']} γ are per feature of its last axes {list(shape)}, not per output "
                    f"channel of {conv_name} (axis 1): they mark no kernel of it",
                    kind,
                )
            )
            continue
        if conv.out_channels != n:
            skipped.append(
                SkippedBN(
                    name,
                    n,
                    f"{conv_name} has {conv.out_channels} output channels, the {KIND_NAMES[layer.kind]} {n}",
                    kind,
                )
            )
            continue
        pairs.append(ConvBNPair(name, conv_name, type(conv).__name__, n, kind))
    return pairs, skipped
