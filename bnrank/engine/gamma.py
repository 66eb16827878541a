"""Statistics of BatchNorm γ: the thesis's (§3.2.1) measure of how many kernels a network really uses.

A BN layer normalises each channel to unit variance and multiplies it by γ, so |γ| is the amplitude a
channel contributes relative to a freshly initialised one (γ = 1). After BN-only training on a target
task, channels the task does not need are driven towards γ ≈ 0: the share of near-zero γ is the share of
redundant kernels.

Default threshold: 0.05. Under it a channel carries less than 5 % of a fresh channel's amplitude
(< 0.25 % of its variance). It sits far below the bulk of γ of a trained or freshly initialised network
(γ ~ 0.2–1.5) yet above the numerical floor reached by channels a BN-only run switches off, so the count
is insensitive to the exact value; `bnrank probe` (γ clipping, thesis Fig. 3.1) measures on a user's own
data that zeroing the channels under it leaves Dice nearly unchanged.

Histogram bins are fixed (|γ| from 0 to 2 in steps of 0.05, plus one overflow bin) so candidates and
phases (raw, after BN-only, after alchemy) can be compared bin by bin.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

DEFAULT_THRESHOLD = 0.05
HIST_EDGES: list[float] = [round(0.05 * i, 2) for i in range(41)] + [float("inf")]
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def bn_layers(model: nn.Module) -> Iterator[tuple[str, _BatchNorm]]:
    """BatchNorm layers with a learnable affine (those without γ have nothing to measure)."""
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module.affine:
            yield name, module


def has_batchnorm(model: nn.Module) -> bool:
    return next(bn_layers(model), None) is not None


def gamma_vector(model: nn.Module) -> torch.Tensor:
    """All γ of the network as one 1-D tensor (graph kept, so R_γ can be differentiated through it)."""
    return torch.cat([m.weight.reshape(-1) for _, m in bn_layers(model)])


def _summary(values: torch.Tensor, threshold: float) -> dict:
    v = values.detach().double().abs()
    n = v.numel()
    if n == 0:
        return {"count": 0}
    q = torch.quantile(v, torch.tensor(QUANTILES, dtype=v.dtype))
    return {
        "count": n,
        "mean": float(v.mean()),
        "std": float(v.std(unbiased=False)),
        "min": float(v.min()),
        "max": float(v.max()),
        "quantiles": {f"{p:g}": float(x) for p, x in zip(QUANTILES, q, strict=True)},
        "threshold": threshold,
        "n_below": int((v < threshold).sum()),
        "share_below": float((v < threshold).double().mean()),
    }


def histogram(values: torch.Tensor) -> list[int]:
    """Counts of |γ| in the fixed bins of HIST_EDGES (last bin: ≥ 2.0)."""
    v = values.detach().double().abs()
    edges = torch.tensor(HIST_EDGES[:-1], dtype=v.dtype)
    idx = torch.bucketize(v, edges, right=True) - 1
    return torch.bincount(idx.clamp(min=0), minlength=len(HIST_EDGES) - 1).tolist()


def gamma_stats(model: nn.Module, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """JSON-ready γ statistics over the whole network and per BN layer."""
    layers = [(name, m.weight.detach().reshape(-1).cpu()) for name, m in bn_layers(model)]
    if not layers:
        return {
            "n_layers": 0,
            "summary": {"count": 0},
            "histogram": {"edges": HIST_EDGES, "counts": []},
            "layers": [],
        }
    everything = torch.cat([g for _, g in layers])
    return {
        "n_layers": len(layers),
        "summary": _summary(everything, threshold),
        "histogram": {
            "edges": [e if e != float("inf") else None for e in HIST_EDGES],
            "counts": histogram(everything),
        },
        "layers": [{"name": name, **_summary(g, threshold)} for name, g in layers],
    }
