"""Network alchemy (thesis §3.2.2): identification, modification and maximization of a checkpoint.

* Identification: BN-only training (``bn_only_evaluate``, the ranking's own procedure) until the γ have
  settled; channels with |γ| under a threshold, or the lowest fraction of all channels, are marked
  redundant.
* Modification: for every marked BN channel, the output filter of the convolution that feeds that BN is
  re-drawn with Kaiming init and the channel's BN parameters are reset (γ = 1, β = 0, running mean 0,
  running variance 1). Which convolution feeds which BN is read off one traced forward pass (the conv
  whose output tensor *is* the BN's input), never off layer names, so any registered architecture or
  MONAI network works; BNs without a directly feeding convolution are reported as skipped.
* Maximization: fine-tune all parameters with L + λ·R_γ, R_γ = −α·mean(Γ) + β·std(Γ) over every BN γ.

``mode`` picks the starting point: ``scratch`` (the architecture, seeded random init), ``finetune`` (the
checkpoint) or ``alchemy`` (the checkpoint, then identification → modification). R_γ is a switch of its
own (``maximization``; default on in alchemy mode, off otherwise), so it can be combined with any mode
(thesis Table 4.2). Every phase reports progress through one ProgressFn, and a diverging phase fails with
the step it failed at, before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from bnrank.engine.alchemy.config import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    DEFAULT_LAMBDA,
    DEFAULT_MAX_SHARE,
    FINETUNE_DEFAULTS,
    MODES,
    AlchemyConfig,
    AlchemyError,
    finetune_config,
)
from bnrank.engine.architectures import Architecture
from bnrank.engine.bn_only import bn_only_evaluate, reinit_head
from bnrank.engine.checkpoints import load_checkpoint, resolve_architecture, save_weights
from bnrank.engine.errors import BNRankError
from bnrank.engine.folds import fold_tasks
from bnrank.engine.gamma import DEFAULT_THRESHOLD, bn_layers, gamma_stats, gamma_vector, has_batchnorm
from bnrank.engine.training import ProgressFn, TaskData, TrainConfig, TrainResult, train

_STD_EPS = 1e-12  # keeps ∂std/∂γ finite when every γ is equal (a fresh network: all γ = 1)


def require_batchnorm(model: nn.Module, what: str) -> None:
    if not has_batchnorm(model):
        raise AlchemyError(
            f"{what} needs BatchNorm layers (their γ mark redundant kernels), but this network has none; "
            "pick a network with BatchNorm (e.g. a MONAI network_def with norm 'batch')"
        )


# ------------------------------------------------------------------------------------------------ R_γ


def r_gamma(model: nn.Module, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA) -> torch.Tensor:
    """R_γ = −α·mean(Γ) + β·std(Γ) over every BN γ of the network (thesis Eq. 3.1), differentiable."""
    g = gamma_vector(model).float()
    mean = g.mean()
    std = torch.sqrt(((g - mean) ** 2).mean() + _STD_EPS)
    return -alpha * mean + beta * std


def gamma_regulariser(
    alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA, lam: float = DEFAULT_LAMBDA
) -> Callable[[nn.Module], torch.Tensor]:
    """λ·R_γ in the form ``training.train(regulariser=...)`` takes."""

    def regulariser(model: nn.Module) -> torch.Tensor:
        return lam * r_gamma(model, alpha, beta)

    return regulariser


# --------------------------------------------------------------------------------------- conv → BN


@dataclass
class ConvBNPair:
    bn: str
    conv: str
    conv_type: str
    channels: int


@dataclass
class SkippedBN:
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


# ------------------------------------------------------------------------------ identification / marks


@dataclass
class Selection:
    """Which BN channels are marked redundant, and by which rule."""

    rule: str  # "threshold" | "fraction" | "none"
    threshold: float | None
    fraction: float | None
    total: int
    marked: int
    kept_after_cap: int
    capped: bool
    min_abs_gamma: float
    channels: dict[str, list[int]]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("channels")
        return d


def select_redundant(
    model: nn.Module,
    *,
    threshold: float | None = None,
    fraction: float | None = None,
    max_share: float = DEFAULT_MAX_SHARE,
) -> tuple[Selection, list[str]]:
    """Mark channels by |γ| < threshold (default gamma.DEFAULT_THRESHOLD) or the lowest ``fraction``.

    Both rules rank all channels of the network together. More than ``max_share`` of all channels is
    never marked: a rule that marks more (say a threshold above every γ) keeps the ``max_share`` with
    the smallest |γ| and returns a warning, since re-initialising (nearly) every kernel would be
    training from scratch under another name.
    """
    if threshold is not None and fraction is not None:
        raise AlchemyError("give a threshold or a fraction of redundant kernels, not both")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise AlchemyError(f"fraction must be in (0, 1], got {fraction}")
    if threshold is not None and not (math.isfinite(threshold) and threshold > 0):
        raise AlchemyError(f"threshold must be a positive number, got {threshold}")
    if not 0.0 < max_share <= 1.0:
        raise AlchemyError(f"max_share must be in (0, 1], got {max_share}")
    layers = [(name, bn.weight.detach().abs().reshape(-1).float().cpu()) for name, bn in bn_layers(model)]
    values = torch.cat([g for _, g in layers])
    total = values.numel()
    order = torch.sort(values, stable=True).indices
    if fraction is not None:
        rule, n_marked = "fraction", math.floor(fraction * total + 1e-9)
    else:
        threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        rule, n_marked = "threshold", int((values < threshold).sum())
    cap = math.floor(max_share * total + 1e-9)
    warnings: list[str] = []
    kept = n_marked
    if n_marked > cap:
        kept = cap
        what = f"|γ| < {threshold:g}" if rule == "threshold" else f"the lowest {fraction:.0%}"
        warnings.append(
            f"{what} marks {n_marked} of {total} kernels ({n_marked / total:.0%}); re-initialising that "
            f"many would discard most of the checkpoint, so only the {cap} with the smallest |γ| "
            f"(max share {max_share:.0%}) are re-initialised"
        )
    if kept == 0:
        what = f"|γ| < {threshold:g}" if rule == "threshold" else f"the lowest {fraction:g} of {total}"
        warnings.append(
            f"no kernel is marked redundant by {what} (smallest |γ| is {float(values.min()):.3f}), so none is "
            "re-initialised; short BN-only training seldom drives γ near 0: mark by --fraction instead, or "
            "give identification more steps"
        )
    chosen = set(order[:kept].tolist())
    channels: dict[str, list[int]] = {}
    offset = 0
    for name, g in layers:
        idx = [i for i in range(g.numel()) if offset + i in chosen]
        if idx:
            channels[name] = idx
        offset += g.numel()
    selection = Selection(
        rule=rule,
        threshold=threshold if rule == "threshold" else None,
        fraction=fraction,
        total=total,
        marked=n_marked,
        kept_after_cap=kept,
        capped=kept < n_marked,
        min_abs_gamma=float(values.min()),
        channels=channels,
    )
    return selection, warnings


# ------------------------------------------------------------------------------------------ modification


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
    """Re-initialise the marked kernels; returns the per-layer report (paired layers and skipped BNs)."""
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


# ------------------------------------------------------------------------------------------------ runs


def _train_dict(result: TrainResult) -> dict[str, Any]:
    return asdict(result)


@dataclass
class AlchemyResult:
    mode: str
    options: dict[str, Any]
    config: dict[str, Any]
    score: float
    dice_per_class: dict[str, float | None]
    curve: list[dict[str, float]]
    steps: int
    seconds: float
    identification: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None
    modification: dict[str, Any] | None = None
    gamma: dict[str, Any] = field(default_factory=dict)
    r_gamma: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    architecture: str | None = None
    build_kwargs: dict[str, Any] | None = None
    checkpoint: str | None = None
    dataset: str | None = None
    weights: str | None = None
    n_train: int = 0
    n_val: int = 0
    val_cases: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Phases:
    """Maps each phase's (step, total) onto one running count over the whole job."""

    def __init__(self, on_progress: ProgressFn | None, total: int, offset: int = 0, prefix: str = "") -> None:
        self.on_progress, self.total, self.offset, self.prefix = on_progress, total, offset, prefix

    def phase(self, name: str, steps: int) -> ProgressFn | None:
        if self.on_progress is None:
            self.offset += steps
            return None
        start = self.offset
        self.offset += steps
        callback = self.on_progress

        def show(step: int, _total: int, message: str) -> None:
            message = message.strip()
            at = message.find("step ")  # drop train()'s label: the phase name says it
            callback(start + step, self.total, f"{self.prefix}[{name}] {message[max(at, 0) :]}")

        return show

    def note(self, message: str) -> None:
        if self.on_progress:
            self.on_progress(self.offset, self.total, f"{self.prefix}{message}")


def planned_steps(config: TrainConfig, options: AlchemyConfig) -> int:
    ident = options.identify_steps if options.identifies else 0
    return ident + config.max_steps


def run_alchemy(
    model: nn.Module,
    arch: Architecture,
    data: TaskData,
    config: TrainConfig,
    options: AlchemyConfig | None = None,
    *,
    on_progress: ProgressFn | None = None,
    _phases: _Phases | None = None,
) -> AlchemyResult:
    """Run the selected phases on ``model`` (already built or loaded for ``data``); trains it in place.

    The head is re-initialised from ``config.seed`` first (as in BN-only evaluation), so every mode and
    every checkpoint starts from the same head.
    """
    options = options or AlchemyConfig()
    started = time.perf_counter()
    needs_bn = [
        what
        for what, on in (
            ("identification", options.identifies),
            ("modification", options.modifies),
            ("maximization (R_γ)", options.maximizes),
        )
        if on
    ]
    if needs_bn:
        require_batchnorm(model, " and ".join(needs_bn))
    phases = _phases or _Phases(on_progress, planned_steps(config, options))
    thr = options.gamma_threshold
    warnings: list[str] = []
    gamma: dict[str, Any] = {"raw": gamma_stats(model, thr)}
    reinit_head(model, arch, config.seed)

    identification = None
    if options.identifies:
        id_config = options.identify_config(config)
        result, _, after = bn_only_evaluate(
            model,
            arch,
            data,
            id_config,
            on_progress=phases.phase("identification", id_config.max_steps),
            label="identification (BN-only)",
        )
        identification = _train_dict(result)
        gamma["after_identification"] = after

    selection_d = modification = None
    if options.modifies:
        selection, sel_warnings = select_redundant(
            model, threshold=options.threshold, fraction=options.fraction, max_share=options.max_share
        )
        warnings += sel_warnings
        pairs, skipped = find_conv_bn_pairs(model, (1, data.in_channels, *config.patch_size))
        modification = modify(model, selection, pairs, skipped, config.seed)
        if modification["marked_but_skipped"]:
            warnings.append(
                f"{modification['marked_but_skipped']} marked channel(s) sit in BN layers with no directly "
                "feeding convolution and were left as they are"
            )
        selection_d = selection.to_dict()
        gamma["after_modification"] = gamma_stats(model, thr)
        phases.note(f"[modification] re-initialised {modification['reinitialised']} of {selection.total} kernels")

    for p in model.parameters():
        p.requires_grad_(True)
    regulariser = gamma_regulariser(options.alpha, options.beta, options.lam) if options.maximizes else None
    r_values: dict[str, float] = {}  # R_γ is recorded with or without maximization, for comparison
    if has_batchnorm(model):
        with torch.no_grad():
            r_values["before"] = float(r_gamma(model, options.alpha, options.beta))
    phase_name = "maximization: fine-tuning with R_γ" if options.maximizes else "fine-tuning"
    ft = train(
        model,
        model.parameters(),
        data,
        config,
        regulariser=regulariser,
        on_progress=phases.phase(phase_name, config.max_steps),
        label=phase_name,
    )
    if r_values:
        with torch.no_grad():
            r_values["after"] = float(r_gamma(model, options.alpha, options.beta))
    gamma["after_alchemy" if options.mode == "alchemy" else "after_training"] = gamma_stats(model, thr)
    opts = asdict(options)
    opts.update(maximization=options.maximizes, threshold=thr if options.fraction is None else None)
    return AlchemyResult(
        mode=options.mode,
        options=opts,
        config=asdict(config),
        score=ft.score,
        dice_per_class=ft.dice_per_class,
        curve=ft.curve,
        steps=ft.steps,
        seconds=round(time.perf_counter() - started, 3),
        identification=identification,
        selection=selection_d,
        modification=modification,
        gamma=gamma,
        r_gamma=r_values,
        warnings=warnings,
        n_train=len(data.train),
        n_val=len(data.val),
        val_cases=[v.case_id for v in data.val],
    )


# ------------------------------------------------------------------------------ from a checkpoint file


def prepare_model(
    checkpoint: str | Path,
    data: TaskData,
    mode: str,
    seed: int,
    *,
    architecture: str | Architecture | None = None,
    network_def: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, Architecture, dict[str, Any]]:
    """The starting network: the checkpoint loaded for ``data``, or (scratch) its architecture freshly
    built from ``seed``; the checkpoint then only fixes the architecture and its build options."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, report = load_checkpoint(
            checkpoint,
            out_channels=data.n_classes,
            in_channels=data.in_channels,
            architecture=architecture,
            network_def=network_def,
        )
    arch, _ = resolve_architecture({}, report.architecture if network_def is None else None, network_def)
    if mode == "scratch":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = arch.build(**report.build_kwargs)
    return model, arch, report.to_dict()


def _metadata(result: AlchemyResult) -> dict[str, Any]:
    return {
        "bnrank": "alchemy",
        "mode": result.mode,
        "architecture": result.architecture,
        "build_kwargs": result.build_kwargs,
        "source_checkpoint": result.checkpoint,
        "dataset": result.dataset,
        "val_dice": result.score,
        "options": result.options,
    }


def alchemy_checkpoint(
    checkpoint: str | Path,
    data: TaskData,
    config: TrainConfig,
    options: AlchemyConfig | None = None,
    *,
    out: str | Path | None = None,
    architecture: str | Architecture | None = None,
    network_def: Mapping[str, Any] | None = None,
    dataset_name: str = "",
    on_progress: ProgressFn | None = None,
    _phases: _Phases | None = None,
) -> tuple[AlchemyResult, nn.Module]:
    """Load, run the phases, and (with ``out``) save the fine-tuned weights atomically as .safetensors.

    Nothing is written unless every phase succeeded.
    """
    options = options or AlchemyConfig()
    model, arch, report = prepare_model(
        checkpoint, data, options.mode, config.seed, architecture=architecture, network_def=network_def
    )
    result = run_alchemy(model, arch, data, config, options, on_progress=on_progress, _phases=_phases)
    result.architecture = arch.name
    result.build_kwargs = report["build_kwargs"]
    result.checkpoint = str(checkpoint)
    result.dataset = dataset_name
    if out is not None:
        result.weights = str(save_weights(model, out, _metadata(result)))
    return result, model


def fold_path(out: str | Path, fold: int) -> Path:
    """``w.safetensors`` → ``w.fold<i>.safetensors``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.fold{fold}{out.suffix or '.safetensors'}")


@dataclass
class FoldsResult:
    folds: list[AlchemyResult]
    dice_mean: float
    dice_std: float
    per_class_mean: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_folds": len(self.folds),
            "dice_per_fold": [f.score for f in self.folds],
            "dice_mean": self.dice_mean,
            "dice_std": self.dice_std,
            "dice_per_class_mean": self.per_class_mean,
            "folds": [f.to_dict() for f in self.folds],
        }


def alchemy_kfold(
    checkpoint: str | Path,
    data: TaskData,
    config: TrainConfig,
    options: AlchemyConfig | None = None,
    *,
    folds: int,
    out: str | Path | None = None,
    architecture: str | Architecture | None = None,
    network_def: Mapping[str, Any] | None = None,
    dataset_name: str = "",
    on_progress: ProgressFn | None = None,
) -> FoldsResult:
    """k-fold cross-validation: all cases of ``data`` split ``folds`` ways (seeded); fold i validates on
    split i and trains on the rest, each from the checkpoint afresh.

    With ``out`` the weights of fold i go to ``<out stem>.fold<i>.safetensors``, all moved into place
    together once every fold has succeeded (a failing fold leaves none of them behind).
    """
    options = options or AlchemyConfig()
    tasks = fold_tasks(data, folds, config.seed)
    per_fold = planned_steps(config, options)
    phases = _Phases(on_progress, per_fold * len(tasks))
    results: list[AlchemyResult] = []
    staging = None
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".alchemy-", dir=Path(out).parent))
    try:
        staged: list[tuple[Path, Path]] = []
        for i, task in enumerate(tasks):
            phases.prefix = f"fold {i + 1}/{len(tasks)} "
            phases.offset = i * per_fold
            result, model = alchemy_checkpoint(
                checkpoint,
                task,
                config,
                options,
                architecture=architecture,
                network_def=network_def,
                dataset_name=dataset_name,
                _phases=phases,
            )
            if staging is not None:
                target = fold_path(out, i)
                tmp = save_weights(model, staging / target.name, _metadata(result))
                staged.append((tmp, target))
                result.weights = str(target)
            results.append(result)
        for tmp, target in staged:
            tmp.replace(target)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    scores = np.array([r.score for r in results], dtype=float)
    classes = list(results[0].dice_per_class)
    per_class: dict[str, float | None] = {}
    for c in classes:
        vals = [r.dice_per_class[c] for r in results if r.dice_per_class.get(c) is not None]
        per_class[c] = float(np.mean(vals)) if vals else None
    return FoldsResult(
        folds=results,
        dice_mean=float(scores.mean()),
        dice_std=float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
        per_class_mean=per_class,
    )


def write_json(payload: Mapping[str, Any], path: str | Path) -> Path:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path
