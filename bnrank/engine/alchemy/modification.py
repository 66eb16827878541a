"""Modification (thesis §3.2.2, step 2): the kernels marked redundant are drawn afresh.

For every marked channel, the output filter of the convolution that feeds its normalisation (see pairs.py;
BatchNorm, InstanceNorm or GroupNorm) is re-drawn with Kaiming init and the channel's norm parameters are
reset (γ = 1, β = 0, and for BatchNorm running mean 0, running variance 1), so the channel re-enters fine-
tuning as a fresh kernel with a fresh scale instead of a switched-off one. Nothing else changes. Draws come
from a generator seeded with the run's seed, so a modification is reproducible and leaves the global RNG
alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import nn
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


def _reset_norm_channels(module: nn.Module, channels: Sequence[int]) -> None:
    """γ = 1 and β = 0 for these channels (own or inserted affine), and fresh running statistics where kept."""
    idx = torch.as_tensor(list(channels), dtype=torch.long, device=module.weight.device)
    module.weight[idx] = 1.0
    if getattr(module, "bias", None) is not None:
        module.bias[idx] = 0.0
    norm = getattr(module, "norm", module)  # the normalisation inside an inserted affine keeps the statistics
    if getattr(norm, "running_mean", None) is not None:
        norm.running_mean[idx] = 0.0
    if getattr(norm, "running_var", None) is not None:
        norm.running_var[idx] = 1.0


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
            _reset_norm_channels(modules[pair.bn], channels)
        layers.append({**asdict(pair), "reinitialised": len(channels), "indices": channels})
    skipped_rows = [{**asdict(s), "marked": len(selection.channels.get(s.bn, []))} for s in skipped]
    return {
        "reinitialised": sum(r["reinitialised"] for r in layers),
        "marked_but_skipped": sum(r["marked"] for r in skipped_rows),
        "layers": layers,
        "skipped": skipped_rows,
    }


def skipped_warnings(report: dict[str, Any]) -> list[str]:
    """A warning for marked channels that :func:`modify` had to leave alone (their norm has no feeding conv)."""
    n = report["marked_but_skipped"]
    if not n:
        return []
    kinds = sorted({s.get("kind", "batch") for s in report["skipped"] if s["marked"]})
    return [
        f"{n} marked channel(s) sit in normalisation layers ({', '.join(kinds)}) with no directly feeding "
        "convolution and were left as they are"
    ]
