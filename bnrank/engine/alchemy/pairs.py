"""Which convolution feeds which BatchNorm: what modification needs to turn a marked γ into a filter.

A BN channel's γ scales one output filter of the convolution right before it, so re-initialising a
"redundant kernel" means re-drawing that filter. The pairing is read off one traced forward pass (the
conv whose output tensor *is* the BN's input), never off layer names, so any registered architecture or
MONAI network works; a BN without a directly feeding convolution is reported as skipped, with the reason,
rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from bnrank.engine.gamma import bn_layers


@dataclass
class ConvBNPair:
    """A BN layer and the convolution whose output it normalises (``channels`` filters, one per γ)."""

    bn: str
    conv: str
    conv_type: str
    channels: int


@dataclass
class SkippedBN:
    """A BN layer no single convolution feeds directly; its marked channels cannot be re-initialised."""

    bn: str
    channels: int
    reason: str


def find_conv_bn_pairs(
    model: nn.Module, example: torch.Tensor | Sequence[int]
) -> tuple[list[ConvBNPair], list[SkippedBN]]:
    """Which convolution directly feeds each BN layer, from one traced forward pass.

    A BN is paired with a conv when the tensor the BN receives is the very tensor object the conv
    returned and nothing modified it in place in between (its version counter is unchanged). Anything
    else (a BN on the raw input, after an activation, a concatenation or a view, a BN called several
    times with different feeders, one the forward never reaches) is returned as skipped with the reason.
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
    handles = []

    def conv_hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            produced[id(output)] = (names[id(module)], output, output._version)

    def bn_hook(module: nn.Module, args: Any) -> None:
        t = args[0] if args else None
        rec = produced.get(id(t)) if isinstance(t, torch.Tensor) else None
        ok = rec is not None and rec[1] is t and rec[2] == t._version
        fed.setdefault(names[id(module)], []).append(rec[0] if ok else None)

    bns = list(bn_layers(model))
    for _, m in model.named_modules():
        if isinstance(m, _ConvNd):
            handles.append(m.register_forward_hook(conv_hook))
    for _, bn in bns:
        handles.append(bn.register_forward_pre_hook(bn_hook))
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
    for name, bn in bns:
        feeders = fed.get(name)
        if not feeders:
            skipped.append(SkippedBN(name, bn.num_features, "not reached by the forward pass"))
            continue
        if len(set(feeders)) > 1:
            skipped.append(SkippedBN(name, bn.num_features, "called several times with different inputs"))
            continue
        conv_name = feeders[0]
        if conv_name is None:
            skipped.append(SkippedBN(name, bn.num_features, "its input does not come straight from a conv"))
            continue
        conv = modules[conv_name]
        if conv.out_channels != bn.num_features:
            skipped.append(
                SkippedBN(
                    name,
                    bn.num_features,
                    f"{conv_name} has {conv.out_channels} output channels, the BN {bn.num_features}",
                )
            )
            continue
        pairs.append(ConvBNPair(name, conv_name, type(conv).__name__, bn.num_features))
    return pairs, skipped
