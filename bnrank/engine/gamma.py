"""Statistics of normalisation γ: the thesis's (§3.2.1) measure of how many kernels a network really uses.

A BN layer normalises each channel to unit variance and multiplies it by γ, so |γ| is the amplitude a
channel contributes relative to a freshly initialised one (γ = 1). After BN-only training on a target
task, channels the task does not need are driven towards γ ≈ 0: the share of near-zero γ is the share of
redundant kernels. The same holds for every normalisation (bnrank.engine.norms): γ of BatchNorm,
InstanceNorm and GroupNorm are per channel, LayerNorm's per feature over its ``normalized_shape``
(flattened), and an identity affine inserted after a normalisation without one is read like its own.
The summary's ``kinds`` says which kinds the figures cover; each layer row has its ``kind``.

Default threshold: 0.05. Under it a channel carries less than 5 % of a fresh channel's amplitude
(< 0.25 % of its variance). It sits far below the bulk of γ of a trained or freshly initialised network
(γ ~ 0.2–1.5) yet above the numerical floor reached by channels a BN-only run switches off, so the count
is insensitive to the exact value; `bnrank probe` (γ clipping, thesis Fig. 3.1) measures on a user's own
data that zeroing the channels under it leaves Dice nearly unchanged.

At ranking budgets (a hundred BN-only steps) hardly any γ reaches 0.05, so that share reads 0 % for every
candidate. Two figures beside it do separate candidates there: the share of channels under a threshold
*relative to their own layer* (|γ| < 0.1 × the layer's median |γ|: a channel a tenth as loud as its
neighbours, whatever the layer's scale), and the change of γ during BN-only training (mean |Δγ|, relative
to mean |γ| at the start, the Wasserstein distance between the |γ| distributions before and after, and
the share of channels whose |γ| shrank): how far, and in which direction, the task moved each candidate.

Histogram bins are fixed (|γ| from 0 to 2 in steps of 0.05, plus one overflow bin) so candidates and
phases (raw, after BN-only, after alchemy) can be compared bin by bin.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from scipy.stats import wasserstein_distance
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnrank.engine.configs.gamma import DEFAULT_THRESHOLD
from bnrank.engine.norms import NormLayer, kinds_of, norm_layers

RELATIVE_THRESHOLD = 0.1
"""A channel counts as relatively small when |γ| < RELATIVE_THRESHOLD × median |γ| of its own layer."""
HIST_EDGES: list[float] = [round(0.05 * i, 2) for i in range(41)] + [float("inf")]
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def bn_layers(model: nn.Module) -> Iterator[tuple[str, _BatchNorm]]:
    """BatchNorm layers with a learnable affine (those without γ have nothing to measure)."""
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module.affine:
            yield name, module


def has_batchnorm(model: nn.Module) -> bool:
    return next(bn_layers(model), None) is not None


def gamma_layers(model: nn.Module) -> list[NormLayer]:
    """Every normalisation layer with γ (own or inserted), of every kind, in module order."""
    return list(norm_layers(model))


def has_gamma(model: nn.Module) -> bool:
    """Whether ``model`` has any γ to measure or train (a normalisation with its own or an inserted affine)."""
    return next(norm_layers(model), None) is not None


def gamma_vector(model: nn.Module) -> torch.Tensor:
    """All γ of the network as one 1-D tensor (graph kept, so R_γ can be differentiated through it)."""
    return torch.cat([layer.weight.reshape(-1) for layer in norm_layers(model)])


def gamma_values(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every layer's γ, by layer name: the reference :func:`gamma_stats` measures change from."""
    return {layer.name: layer.weight.detach().reshape(-1).cpu().clone() for layer in norm_layers(model)}


def relatively_small(values: torch.Tensor) -> torch.Tensor:
    """Mask of one layer's channels with |γ| under RELATIVE_THRESHOLD × the layer's median |γ|."""
    v = values.detach().double().abs()
    if v.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    return v < RELATIVE_THRESHOLD * v.quantile(0.5)


def _summary(values: torch.Tensor, threshold: float, small: torch.Tensor | None = None) -> dict:
    v = values.detach().double().abs()
    n = v.numel()
    if n == 0:
        return {"count": 0}
    q = torch.quantile(v, torch.tensor(QUANTILES, dtype=v.dtype))
    small = relatively_small(v) if small is None else small
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
        "relative_threshold": RELATIVE_THRESHOLD,
        "n_below_relative": int(small.sum()),
        "share_below_relative": float(small.double().mean()),
    }


def _change(before: torch.Tensor, after: torch.Tensor) -> dict:
    b, a = before.double(), after.double()
    delta = (a - b).abs()
    scale = float(b.abs().mean())
    return {
        "count": int(b.numel()),
        "mean_abs_delta": float(delta.mean()),
        "max_abs_delta": float(delta.max()),
        "relative_abs_delta": float(delta.mean()) / scale if scale > 0 else None,
        "wasserstein_abs": float(wasserstein_distance(b.abs().numpy(), a.abs().numpy())),
        "share_shrunk": float((a.abs() < b.abs()).double().mean()),
    }


def _json_edges() -> list[float | None]:
    """HIST_EDGES as stored and served: the open end (inf, which JSON cannot hold) as None."""
    return [e if e != float("inf") else None for e in HIST_EDGES]


def histogram(values: torch.Tensor) -> list[int]:
    """Counts of |γ| in the fixed bins of HIST_EDGES (last bin: ≥ 2.0)."""
    v = values.detach().double().abs()
    edges = torch.tensor(HIST_EDGES[:-1], dtype=v.dtype)
    idx = torch.bucketize(v, edges, right=True) - 1
    return torch.bincount(idx.clamp(min=0), minlength=len(HIST_EDGES) - 1).tolist()


def gamma_stats(
    model: nn.Module, threshold: float = DEFAULT_THRESHOLD, reference: Mapping[str, torch.Tensor] | None = None
) -> dict:
    """JSON-ready γ statistics over the whole network and per normalisation layer (``kinds``: which kinds).

    With ``reference`` (:func:`gamma_values` taken earlier, e.g. before BN-only training) the summary also has a
    ``change`` entry over the layers present in both with the same size, and each such layer its own ``change``
    (inside the summary and the layer rows, so a store that keeps those keeps the change too).
    """
    found = gamma_layers(model)
    layers = [(layer.name, layer.weight.detach().reshape(-1).float().cpu()) for layer in found]
    if not layers:
        return {
            "n_layers": 0,
            "summary": {"count": 0, "kinds": []},
            "histogram": {"edges": _json_edges(), "counts": []},
            "layers": [],
        }
    everything = torch.cat([g for _, g in layers])
    small = [relatively_small(g) for _, g in layers]
    stats = {
        "n_layers": len(layers),
        "summary": {**_summary(everything, threshold, torch.cat(small)), "kinds": kinds_of(found)},
        "histogram": {
            "edges": _json_edges(),
            "counts": histogram(everything),
        },
        "layers": [
            {"name": name, "kind": layer.label, **_summary(g, threshold, s)}
            for (name, g), s, layer in zip(layers, small, found, strict=True)
        ],
    }
    if reference is not None:
        pairs = [
            (reference[name], g, row)
            for (name, g), row in zip(layers, stats["layers"], strict=True)
            if name in reference and reference[name].shape == g.shape
        ]
        for before, after, row in pairs:
            row["change"] = _change(before, after)
        if pairs:
            stats["summary"]["change"] = _change(
                torch.cat([b for b, _, _ in pairs]), torch.cat([a for _, a, _ in pairs])
            )
    return stats
