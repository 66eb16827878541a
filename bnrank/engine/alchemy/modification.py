"""Modification (thesis §3.2.2, step 2): the kernels marked redundant are drawn afresh.

For every marked BN channel, the output filter of the convolution that feeds that BN (see pairs.py) is
re-drawn with Kaiming init and the channel's BN parameters are reset (γ = 1, β = 0, running mean 0,
running variance 1), so the channel re-enters fine-tuning as a fresh kernel with a fresh scale instead of
a switched-off one. Nothing else in the network changes. Draws come from a generator seeded with the run's
seed, so a modification is reproducible and leaves the global RNG alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from bnrank.engine.alchemy.identification import Selection
from bnrank.engine.alchemy.pairs import ConvBNPair, SkippedBN


def _reinit_filters(conv: _ConvNd, channels: Sequence[int], generator: torch.Generator) -> None:
    """Kaiming-normal draws for the given output filters; fan from the whole weight; their bias → 0."""
    w = conv.weight
    fresh = torch.empty(w.shape, dtype=torch.float32)
    nn.init.kaiming_normal_(fresh, mode="fan_in", nonlinearity="relu", generator=generator)
    fresh = fresh.to(device=w.device, dtype=w.dtype)
    idx = torch.as_tensor(list(channels), dtype=torch.long, device=w.device)
    if isinstance(conv, _ConvTransposeNd):
        # weight is [in, out / groups, *k]: output channel c lives in column c % (out/groups) of its group
        out_pg = conv.out_channels // conv.groups
        in_pg = conv.in_channels // conv.groups
        for c in channels:
            g, j = divmod(int(c), out_pg)
            rows = slice(g * in_pg, (g + 1) * in_pg)
            w[rows, j] = fresh[rows, j]
    else:
        w[idx] = fresh[idx]
    if conv.bias is not None:
        conv.bias[idx] = 0.0


def _reset_bn_channels(bn: _BatchNorm, channels: Sequence[int]) -> None:
    idx = torch.as_tensor(list(channels), dtype=torch.long, device=bn.weight.device)
    bn.weight[idx] = 1.0
    bn.bias[idx] = 0.0
    if bn.running_mean is not None:
        bn.running_mean[idx] = 0.0
    if bn.running_var is not None:
        bn.running_var[idx] = 1.0


@torch.no_grad()
def modify(
    model: nn.Module,
    selection: Selection,
    pairs: Sequence[ConvBNPair],
    skipped: Sequence[SkippedBN],
    seed: int,
) -> dict[str, Any]:
    """Re-initialise exactly the kernels ``selection`` marks, in place; returns the per-layer report.

    ``pairs`` and ``skipped`` come from :func:`~bnrank.engine.alchemy.pairs.find_conv_bn_pairs`; marked
    channels of a skipped BN are counted (``marked_but_skipped``) and left as they are.
    """
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for pair in pairs:
        channels = selection.channels.get(pair.bn, [])
        if channels:
            _reinit_filters(modules[pair.conv], channels, generator)
            _reset_bn_channels(modules[pair.bn], channels)
        layers.append({**asdict(pair), "reinitialised": len(channels), "indices": channels})
    skipped_rows = [{**asdict(s), "marked": len(selection.channels.get(s.bn, []))} for s in skipped]
    return {
        "reinitialised": sum(r["reinitialised"] for r in layers),
        "marked_but_skipped": sum(r["marked"] for r in skipped_rows),
        "layers": layers,
        "skipped": skipped_rows,
    }


def skipped_warnings(report: dict[str, Any]) -> list[str]:
    """A warning for marked channels that :func:`modify` had to leave alone (their BN has no feeding conv)."""
    n = report["marked_but_skipped"]
    if not n:
        return []
    return [f"{n} marked channel(s) sit in BN layers with no directly feeding convolution and were left as they are"]
