"""Request and response bodies. The OpenAPI document generated from these is the API contract.

Requests forbid unknown fields: a misspelt ``max_step`` silently falling back to the default would run a
ranking with a budget the user never asked for.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bnrank.engine.alchemy import FINETUNE_DEFAULTS, IDENTIFY_LR, IDENTIFY_STEPS
from bnrank.engine.probe import DEFAULT_DRAWS as PROBE_DRAWS
from bnrank.engine.probe import DEFAULT_THRESHOLDS as PROBE_THRESHOLDS
from bnrank.engine.training import TrainConfig

T = TypeVar("T")
_DEFAULT = TrainConfig()


class Problem(BaseModel):
    """Why one case of a dataset was left out."""

    case_id: str
    message: str


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="rows matching the filters, over all pages")
    limit: int
    offset: int


class ErrorOut(BaseModel):
    detail: str = Field(description="what is wrong and where")


# ------------------------------------------------------------------------------------------ checkpoints


class CheckpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    sha256: str
    size: int
    format: str
    architecture: str
    build_kwargs: dict[str, Any]
    in_channels: int | None
    out_channels: int | None
    n_parameters: int
    n_bn_channels: int
    modality: str | None
    load_report: dict[str, Any]
    gamma_summary: dict[str, Any] | None = Field(default=None, description="raw γ statistics (as uploaded)")
    created_at: datetime


class GammaOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    phase: Literal["raw", "after_bn", "modified", "after_alchemy"]
    threshold: float
    summary: dict[str, Any]
    histogram: dict[str, Any]
    layers: list[dict[str, Any]]


# -------------------------------------------------------------------------------------------- datasets


class DatasetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=300)
    uri: str = Field(
        min_length=1, max_length=4096, description="folder under a data root: absolute, file://, or root-relative"
    )
    modality: Literal["CT", "MR", "other"] | None = Field(
        default=None, description="default: from the dataset's channel names"
    )
    format: Literal["auto", "nnunet", "msd"] = "auto"


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    uri: str
    format: str
    modality: str
    n_cases: int
    labels: dict[str, int]
    channel_names: list[str]
    fingerprint: str
    problems: list[Problem]
    created_at: datetime


# ---------------------------------------------------------------------------------------------- jobs


class Budget(BaseModel):
    """Per-candidate training budget (the engine's TrainConfig defaults)."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(default=_DEFAULT.max_steps, ge=1, le=1_000_000)
    patch_size: int | list[int] = Field(default=list(_DEFAULT.patch_size), description="one side or three")
    batch_size: int = Field(default=_DEFAULT.batch_size, ge=1, le=256)
    val_every: int = Field(default=_DEFAULT.val_every, ge=1)
    patience: int = Field(default=_DEFAULT.patience, ge=1)
    lr: float = Field(default=_DEFAULT.lr, gt=0, le=10)
    precision: Literal["auto", "fp32", "bf16"] = _DEFAULT.precision

    @field_validator("patch_size")
    @classmethod
    def _three_sides(cls, value: int | list[int]) -> list[int]:
        sides = [value] * 3 if isinstance(value, int) else list(value)
        if len(sides) != 3:
            raise ValueError(f"patch_size takes 1 or 3 numbers, got {len(sides)}")
        if any(s < 4 or s > 1024 for s in sides):
            raise ValueError(f"each patch side must be between 4 and 1024 voxels, got {sides}")
        return sides


class RankingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str
    checkpoint_ids: list[str] = Field(min_length=1)
    budget: Budget = Field(default_factory=Budget)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    control: bool = Field(default=True, description="also rank a random-init copy of each architecture")

    @field_validator("checkpoint_ids")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        dupes = sorted({c for c in value if value.count(c) > 1})
        if dupes:
            raise ValueError(f"checkpoint ids listed twice: {', '.join(dupes)}")
        return value


class AlchemyBudget(Budget):
    """Fine-tuning budget: all parameters train, so a smaller learning rate than a ranking's BN-only one."""

    max_steps: int = Field(default=FINETUNE_DEFAULTS["max_steps"], ge=1, le=1_000_000)
    val_every: int = Field(default=FINETUNE_DEFAULTS["val_every"], ge=1)
    patience: int = Field(default=FINETUNE_DEFAULTS["patience"], ge=1)
    lr: float = Field(default=FINETUNE_DEFAULTS["lr"], gt=0, le=10)


class AlchemyIn(BaseModel):
    """Network alchemy (DESIGN §2): identification → modification → maximization, each switchable.

    Options left out take the engine's defaults.
    """

    model_config = ConfigDict(extra="forbid")

    dataset_id: str
    checkpoint_id: str
    mode: Literal["alchemy", "finetune", "scratch"] = "alchemy"
    identification: bool = Field(default=True, description="BN-only training first, to find redundant kernels")
    modification: bool = Field(default=True, description="re-initialise the kernels found redundant")
    maximization: bool | None = Field(default=None, description="train with L + λ·R_γ (default: on in alchemy mode)")
    alpha: float | None = Field(default=None, ge=0, description="R_γ weight of the mean |γ|")
    beta: float | None = Field(default=None, ge=0, description="R_γ weight of the std of γ")
    lam: float | None = Field(default=None, ge=0, description="λ, weight of R_γ in the loss")
    threshold: float | None = Field(default=None, gt=0, description="|γ| under which a kernel is redundant")
    fraction: float | None = Field(default=None, gt=0, le=1, description="or: this lowest share of all γ")
    identify_steps: int | None = Field(default=IDENTIFY_STEPS, ge=1, description="BN-only steps of identification")
    identify_lr: float | None = Field(default=IDENTIFY_LR, gt=0, description="BN-only learning rate of identification")
    budget: AlchemyBudget = Field(default_factory=AlchemyBudget)
    folds: int = Field(default=1, ge=1, le=20, description="k-fold cross-validation when above 1 (one task each)")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class ProbeIn(BaseModel):
    """The γ-clipping probe (thesis Fig. 3.1): BN-only training, then zero the γ under each threshold and as
    many random γ, and compare the Dice. Tells whether small γ mark redundant kernels on *this* dataset."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str
    checkpoint_id: str
    thresholds: list[float] = Field(
        default_factory=lambda: list(PROBE_THRESHOLDS), min_length=1, max_length=32, description="|γ| cut-offs"
    )
    draws: int = Field(default=PROBE_DRAWS, ge=1, le=20, description="random clippings averaged per threshold")
    budget: Budget = Field(default_factory=Budget, description="the BN-only training before clipping")
    folds: int = Field(default=1, ge=1, le=20, description="k-fold cross-validation when above 1 (one task each)")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    @field_validator("thresholds")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        bad = [t for t in value if not (t > 0 and t < float("inf"))]
        if bad:
            raise ValueError(f"thresholds must be positive finite numbers, got {bad}")
        return sorted(set(value))


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    dataset_id: str | None
    params: dict[str, Any]
    progress: float = Field(description="0..1")
    message: str
    cancel_requested: bool
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class EntryOut(BaseModel):
    id: str
    rank: int | None
    name: str
    checkpoint_id: str | None
    is_control: bool
    architecture: str | None
    status: Literal["queued", "running", "ok", "failed", "cancelled"]
    score: float | None
    dice_per_class: dict[str, float | None]
    gamma: dict[str, dict[str, Any]] = Field(description="γ summary per phase: raw, after_bn")
    steps: int
    seconds: float
    progress: float
    curve: list[dict[str, float]]
    error: str | None


class RankingOut(BaseModel):
    job: JobOut
    entries: list[EntryOut] = Field(description="ranked entries first (best first), then failed/unfinished ones")
    stability: dict[str, Any] | None = Field(description="order at part of the budget against the final order")


class AlchemyResultOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    fold: int
    status: Literal["queued", "running", "ok", "failed", "cancelled"]
    progress: float
    dice: dict[str, Any] = Field(description="score (mean foreground Dice) and per_class")
    reinitialised: dict[str, Any] = Field(description="kernels re-initialised, in total and per layer")
    metrics: dict[str, Any]
    gamma: dict[str, dict[str, Any]] = Field(default_factory=dict, description="γ summary per phase")
    error: str | None
    artifact_id: str | None = Field(description="fine-tuned weights: GET /v1/artifacts/{artifact_id}")


class AlchemyOut(BaseModel):
    job: JobOut
    summary: dict[str, Any] | None = Field(description="Dice per fold, mean and std, once finished")
    results: list[AlchemyResultOut]


class ProbeRowOut(BaseModel):
    threshold: float
    n_clipped: int
    share_clipped: float = Field(description="share of all BN channels clipped")
    dice_threshold: float = Field(description="Dice with every |γ| under the threshold zeroed")
    dice_random: float = Field(description="Dice with as many random γ zeroed (mean over draws)")
    dice_random_std: float
    dice_per_class_threshold: dict[str, float | None]
    dice_random_draws: list[float]


class ProbeFoldOut(BaseModel):
    fold: int
    status: Literal["queued", "running", "ok", "failed", "cancelled"]
    progress: float
    dice_unclipped: float | None = Field(description="validation Dice after BN-only training, nothing clipped")
    n_channels: int | None
    rows: list[ProbeRowOut] = Field(description="one per threshold, ascending")
    bn_only: dict[str, Any] = Field(description="the BN-only training: score, per-class Dice, curve, steps")
    gamma: dict[str, dict[str, Any]] = Field(default_factory=dict, description="γ summary after BN-only")
    seconds: float | None
    error: str | None


class ProbeOut(BaseModel):
    job: JobOut
    folds: list[ProbeFoldOut]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
