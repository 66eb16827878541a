"""LogME: a zero-training tier that scores a candidate's features by forward passes alone.

You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021.
For features F (N × D) and one target column y (N), LogME is the log marginal likelihood (the evidence)
of a Bayesian linear model y = F w + ε, with prior w ~ N(0, α⁻¹ I) and noise ε ~ N(0, β⁻¹ I), at the α, β
that maximise it. With σ_i the eigenvalues of FᵀF, γ = Σ β σ_i / (α + β σ_i) and m the posterior mean
β (α I + β FᵀF)⁻¹ Fᵀ y, the fixed point is α = γ / mᵀm, β = (N − γ) / ‖y − F m‖², and

    log p(y | F, α, β) = D/2 log α + N/2 log β − 1/2 Σ log(α + β σ_i) − β/2 ‖y − F m‖² − α/2 mᵀm − N/2 log 2π.

For classification each one-hot column is one target; the score is the mean over columns of the evidence
divided by N (so it does not grow with the sample size). Higher means the features explain the labels
more simply, i.e. a linear head on them would fit the task better.

For segmentation the "features" are the input of the segmentation head, captured with a forward pre-hook
on the architecture's head modules (the head itself is replaced for every candidate, so it plays no part).
Where the head is a 1×1×1 conv on full-resolution decoder output (unet3d, BasicUNet) there is one feature
vector per label voxel. Where the head's input is coarser than the labels (MedicalNet's `conv_seg` starts
at 1/8 of the input, MONAI UNet's last up-block at 1/2), the labels are brought down to the feature grid
instead (see :func:`labels_on_feature_grid`). Samples are drawn per class (balanced, capped, seeded) from
patches of the training cases, drawn from the same seeded patch schedule BN-only training uses.
BatchNorm normalises with the statistics of those target patches (train mode, running statistics left
untouched), as BN-only evaluation does from its first step, so a candidate pretrained elsewhere is not
judged on stale source statistics.

Cost: ``n_batches`` forward passes per candidate, no backward pass, no optimiser.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnrank.engine.architectures import Architecture
from bnrank.engine.bn_only import head_modules
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.entries import RankEntry, RankingResult
from bnrank.engine.errors import BNRankError, TrainingError
from bnrank.engine.ranking import Candidate, build_candidate, control_candidates, order_entries
from bnrank.engine.training.patches import PatchSchedule, TaskData
from bnrank.engine.training.precision import autocast, resolve_device

EPSILON = 1e-5
MAX_ITERATIONS = 11  # the reference implementation's bound; it typically converges in 2-3 iterations


@dataclass
class LogMEConfig:
    """How many patches to push through a candidate and how many voxels per class to keep."""

    n_batches: int = 8
    per_class: int = 1000
    seed: int = 0
    patch_size: tuple[int, int, int] = (32, 32, 32)
    batch_size: int = 2
    foreground_ratio: float = 0.5
    device: str = "cpu"
    precision: str = "auto"

    @classmethod
    def from_train_config(cls, config: TrainConfig, **overrides) -> LogMEConfig:
        base = {
            "seed": config.seed,
            "patch_size": tuple(config.patch_size),
            "batch_size": config.batch_size,
            "foreground_ratio": config.foreground_ratio,
            "device": config.device,
            "precision": config.precision,
        }
        return cls(**{**base, **overrides})


@dataclass
class LogMEResult:
    score: float
    per_class: dict[str, float | None] = field(default_factory=dict)
    n_voxels: int = 0
    n_features: int = 0
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------ the math


def _column_evidence(
    y: np.ndarray, f: np.ndarray, sigma: np.ndarray, v: np.ndarray, fty: np.ndarray
) -> tuple[float, float, float]:
    """Fixed-point iteration on α, β for one target column; returns (evidence / N, α, β).

    ``sigma``, ``v``: eigenvalues and eigenvectors of FᵀF; ``fty``: Fᵀ y.
    """
    n, d = f.shape
    alpha, beta = 1.0, 1.0
    proj = v.T @ fty  # Fᵀy in the eigenbasis
    for _ in range(MAX_ITERATIONS):
        gamma = float((beta * sigma / (alpha + beta * sigma)).sum())
        m = v @ (beta * proj / (alpha + beta * sigma))
        alpha_de = float(m @ m)
        residual = float(((y - f @ m) ** 2).sum())
        new_alpha = gamma / (alpha_de + EPSILON)
        new_beta = (n - gamma) / (residual + EPSILON)
        done = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 0.01
        alpha, beta = new_alpha, new_beta
        if done:
            break
    # The evidence at the final α, β with the m and residual that go with them. (The reference code reuses
    # the last iteration's m, computed with the previous α, β; this is the exact evidence at the final
    # values, which tests/engine/test_logme.py checks against the closed-form marginal likelihood.)
    m = v @ (beta * proj / (alpha + beta * sigma))
    alpha_de = float(m @ m)
    residual = float(((y - f @ m) ** 2).sum())
    evidence = (
        d / 2.0 * np.log(alpha)
        + n / 2.0 * np.log(beta)
        - 0.5 * float(np.sum(np.log(alpha + beta * sigma)))
        - beta / 2.0 * (residual + EPSILON)
        - alpha / 2.0 * (alpha_de + EPSILON)
        - n / 2.0 * np.log(2 * np.pi)
    )
    return float(evidence / n), alpha, beta


def logme_evidence(features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """LogME evidence per voxel for each target column: features [N, D], targets [N, K] → [K].

    Features are used as given (the paper does not standardise them).
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if f.ndim != 2 or y.shape[0] != f.shape[0]:
        raise ValueError(f"features must be [N, D] and targets [N, K] with the same N, got {f.shape}, {y.shape}")
    if not np.isfinite(f).all():
        raise TrainingError("LogME: the features contain NaN or Inf")
    sigma, v = np.linalg.eigh(f.T @ f)
    sigma = np.clip(sigma, 0.0, None)
    return np.array([_column_evidence(y[:, k], f, sigma, v, f.T @ y[:, k])[0] for k in range(y.shape[1])])


def logme_classification(features: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Evidence per class (one-hot columns); a class with no sample gets NaN."""
    labels = np.asarray(labels).astype(np.int64)
    onehot = (labels[:, None] == np.arange(n_classes)[None, :]).astype(np.float64)
    evidence = logme_evidence(features, onehot)
    present = onehot.sum(0) > 0
    return np.where(present, evidence, np.nan)


# ------------------------------------------------------------------------------------- features of a model


def sample_balanced(labels: np.ndarray, n_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``per_class`` voxels of every class, drawn without replacement."""
    picked = []
    for k in range(n_classes):
        idx = np.flatnonzero(labels == k)
        if len(idx) > per_class:
            idx = rng.choice(idx, per_class, replace=False)
        picked.append(idx)
    return np.sort(np.concatenate(picked))


def labels_on_feature_grid(labels: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Labels [B, X, Y, Z] on a feature grid [B, *grid]: nearest neighbour, at the centre of each feature cell.

    Why the labels go to the features and not the features to the labels: LogME asks how well a linear
    model on *the features the head receives* explains the labels, so every sample should be one of
    those feature vectors. Taking the label at each feature cell keeps them exactly as the head sees them,
    one sample per cell. Trilinear upsampling of the features would instead (a) score vectors the head
    never receives, convex mixtures of neighbouring cells, with a fixed interpolation standing in for the
    head's own learned upsampling (MedicalNet's transposed conv); and (b) turn each real feature vector
    into up to 8³ = 512 near-duplicate samples, so the evidence, which assumes independent samples, would
    reward the interpolation's smoothness rather than the features, and memory would grow as much.

    Cell i of n along an axis of s voxels covers [i·s/n, (i+1)·s/n) and takes the label at its centre,
    voxel ⌊(i + ½)·s/n⌋ (PyTorch's "nearest-exact"; the half-voxel convention of the networks'
    ``align_corners=False`` upsampling). Integer indexing keeps the labels exact. A grid equal to the
    label shape is the identity. The price: a structure thinner than a cell can miss every cell centre;
    such a class then gets no sample in that batch, as a class absent from a patch does.
    """
    if labels.ndim != len(grid) + 1:
        raise TrainingError(f"labels {tuple(labels.shape)} and feature grid {tuple(grid)} have different ranks")
    out = labels
    for axis, (size, cells) in enumerate(zip(labels.shape[1:], grid, strict=True), start=1):
        if cells == size:
            continue
        centres = ((torch.arange(cells, dtype=torch.float64) + 0.5) * (size / cells)).floor().long()
        out = out.index_select(axis, centres.clamp_(0, size - 1))
    return out


class _HeadInput:
    """Forward pre-hooks on the head modules keep the input of the first one called (the head's entry)."""

    def __init__(self, model: nn.Module, arch: Architecture) -> None:
        self.value: torch.Tensor | None = None
        modules = head_modules(model, arch)
        if not modules:
            raise TrainingError(f"{arch.name}: no segmentation head modules found to take features from")
        self.handles = [m.register_forward_pre_hook(self._hook) for _, m in modules]

    def _hook(self, module: nn.Module, args: tuple) -> None:
        if self.value is None and args and isinstance(args[0], torch.Tensor):
            self.value = args[0].detach()

    def take(self) -> torch.Tensor:
        if self.value is None:
            raise TrainingError("the segmentation head was never called, so no features were captured")
        value, self.value = self.value, None
        return value

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def head_features(
    model: nn.Module, arch: Architecture, data: TaskData, config: LogMEConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Features of the head's input [N, D] and class labels [N] from seeded patches of the training cases.

    One sample per cell of the head's input grid; where that grid is coarser than the labels, each cell
    takes the label at its centre (:func:`labels_on_feature_grid` says why the labels move, not the
    features). The per-class cap applies to the cells sampled, whatever their resolution.
    """
    device = resolve_device(config.device)
    schedule = PatchSchedule(data.train, config.patch_size, config.batch_size, config.seed, config.foreground_ratio)
    rng = np.random.default_rng(config.seed)
    model.to(device).train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    for m in bns:
        m.momentum = 0.0  # batch statistics for the forward pass, running statistics unchanged
    hook = _HeadInput(model, arch)
    amp = TrainConfig(device=device, precision=config.precision)
    feats, labels = [], []
    # Per batch, a share of the per-class cap, so every batch contributes.
    per_batch = max(1, -(-config.per_class // config.n_batches))
    try:
        for _ in range(config.n_batches):
            x, y = schedule.next_batch()
            with autocast(amp):
                model(x.to(device))
            f = hook.take().float()  # [B, D, x, y, z], (x, y, z) the head's input grid
            if y.ndim == f.ndim and y.shape[1] == 1:
                y = y[:, 0]  # [B, 1, X, Y, Z] → [B, X, Y, Z]
            if f.ndim != y.ndim + 1 or f.shape[0] != y.shape[0]:
                raise TrainingError(
                    f"{arch.name}: the head's input is shaped {tuple(f.shape)}, the labels {tuple(y.shape)}; "
                    "LogME needs one [batch, channels, x, y, z] feature map per labelled patch"
                )
            lab = labels_on_feature_grid(y, f.shape[2:]).reshape(-1).numpy()
            f = f.permute(0, 2, 3, 4, 1).reshape(-1, f.shape[1]).cpu().numpy()
            idx = sample_balanced(lab, data.n_classes, per_batch, rng)
            feats.append(f[idx].astype(np.float64))
            labels.append(lab[idx])
    finally:
        hook.remove()
        for m, (momentum, tracked) in zip(bns, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
    return np.concatenate(feats), np.concatenate(labels)


def logme_score(model: nn.Module, arch: Architecture, data: TaskData, config: LogMEConfig) -> LogMEResult:
    """The candidate's LogME on the task: mean over classes (background included) of evidence per voxel."""
    started = time.perf_counter()
    features, labels = head_features(model, arch, data, config)
    per_class = logme_classification(features, labels, data.n_classes)
    finite = per_class[np.isfinite(per_class)]
    if not finite.size:
        raise TrainingError("LogME: no class was sampled")
    return LogMEResult(
        score=float(finite.mean()),
        per_class={
            name: (float(v) if np.isfinite(v) else None) for name, v in zip(data.class_names, per_class, strict=True)
        },
        n_voxels=len(labels),
        n_features=int(features.shape[1]),
        seconds=round(time.perf_counter() - started, 3),
    )


def logme_entry(candidate: Candidate, data: TaskData, config: TrainConfig, logme: LogMEConfig) -> RankEntry:
    """One candidate's LogME as a ranking entry (score = LogME, steps 0); input problems fail the entry."""
    entry = RankEntry(checkpoint=candidate.name, is_control=candidate.is_control)
    started = time.perf_counter()
    try:
        model, arch, report = build_candidate(candidate, data, config.seed)
        entry.architecture = arch.name
        entry.load_report = report.to_dict() if report else None
        entry.score = logme_score(model, arch, data, logme).score
    except BNRankError as exc:
        entry.status, entry.error = "failed", str(exc)
    entry.seconds = round(time.perf_counter() - started, 3)
    return entry


def rank_logme(
    candidates: Sequence[Candidate],
    data: TaskData,
    config: TrainConfig,
    *,
    dataset_name: str = "",
    control: bool = True,
    logme: LogMEConfig | None = None,
) -> RankingResult:
    """A ranking by LogME, in the shape of ``rank_candidates``' result.

    Failed candidates become failed entries, as in a BN-only ranking; the random-init control is added
    the same way (one per architecture and build options seen). There is no curve, so no stability.
    """
    logme = logme or LogMEConfig.from_train_config(config)
    entries = [logme_entry(cand, data, config, logme) for cand in candidates]
    if control:
        entries += [logme_entry(cand, data, config, logme) for cand in control_candidates(entries, candidates)]
    ordered = order_entries(entries)
    return RankingResult(
        dataset=dataset_name,
        entries=ordered,
        config={**asdict(config), "method": "logme", "logme": asdict(logme)},
        stability={"at_fraction": None, "kendall_tau": None, "same_top1": None},
    )
