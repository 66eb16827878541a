"""Request and response bodies. The OpenAPI document generated from these is the API contract.

Job requests are the job's stored parameters (service/core/params.py, generated from the engine's option
dataclasses) plus what they act on, so a budget or an alchemy option is declared once, in the engine, with
its default, bounds and help. Requests forbid unknown fields: a misspelt ``max_step`` silently falling back
to the default would run a ranking with a budget the user never asked for.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, computed_field, create_model, field_validator

from bnrank.engine.alchemy import AlchemyConfig
from service.core.kinds import kind_of
from service.core.params import (
    AlchemyBudget,
    AlchemyOptions,
    AlchemyParams,
    FoldParams,
    ProbeParams,
    RankingParams,
    fields_of,
)

T = TypeVar("T")

# The most candidates one ranking may name. Declared in the schema (not only checked by the route) so that
# pydantic stops at item 65 of a list of a million, before any per-item work, and the document says so.
# A deployment may lower it further (BNRANK_MAX_CANDIDATES), never raise it past this.
MAX_CANDIDATES = 64
# Row ids are 32 hex digits (uuid4); 64 leaves room without letting one id be a megabyte.
RowId = Annotated[str, Field(min_length=1, max_length=64)]


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
    """The one error body of every status the service answers with (4xx and 5xx alike)."""

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
    head: str | None = Field(default=None, description="a converted graph's head as the uploader named it")
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
        min_length=1,
        max_length=4096,
        description="folder under a data root: absolute, file://, or root-relative; or s3://bucket/prefix in an "
        "allowed bucket (BNRANK_DATASET_BUCKETS)",
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


class RankingIn(RankingParams):
    """A ranking: the checkpoints, the dataset, and the budget every candidate is trained with."""

    dataset_id: RowId
    checkpoint_ids: list[RowId] = Field(min_length=1, max_length=MAX_CANDIDATES)

    @field_validator("checkpoint_ids")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        """One pass over the list (at most MAX_CANDIDATES long by now): ``list.count`` per id was quadratic."""
        dupes = sorted(c for c, n in Counter(value).items() if n > 1)
        if dupes:
            raise ValueError(f"checkpoint ids listed twice: {', '.join(dupes)}")
        return value

    def params(self) -> RankingParams:
        return RankingParams.model_validate(self.model_dump(include=set(RankingParams.model_fields)))


class _AlchemyRequest(FoldParams):
    """AlchemyIn without its options, which are added from AlchemyConfig below; the request is flat (the
    options beside the budget) while the stored params keep them apart, under ``options``."""

    dataset_id: RowId
    budget: AlchemyBudget = Field(default_factory=AlchemyBudget)  # type: ignore[valid-type]

    def params(self) -> AlchemyParams:
        options = {name: getattr(self, name) for name in AlchemyOptions.model_fields}
        return AlchemyParams.model_validate(
            {**self.model_dump(include=set(FoldParams.model_fields)), "options": options}
        )


AlchemyIn = create_model(  # type: ignore[call-overload]
    "AlchemyIn",
    __base__=_AlchemyRequest,
    __doc__="Network alchemy (DESIGN §2): identification → modification → maximization, each switchable. "
    "Every option is the engine's AlchemyConfig field of the same name; options left out take its defaults.",
    **fields_of(AlchemyConfig),
)


class ProbeIn(ProbeParams):  # type: ignore[misc, valid-type]
    """The γ-clipping probe (thesis Fig. 3.1): BN-only training, then zero the γ under each threshold and as
    many random γ, and compare the Dice. Tells whether small γ mark redundant kernels on *this* dataset."""

    dataset_id: RowId

    def params(self) -> ProbeParams:
        return ProbeParams.model_validate(self.model_dump(exclude={"dataset_id"}))


JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
"""A job's state, as every job-shaped body and the status filters spell it."""


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    status: JobStatus
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

    @computed_field(description="where the job's results are served: its kind's collection (e.g. /v1/rankings/{id})")
    def results(self) -> str:
        return f"{kind_of(self.kind).path}/{self.id}"


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
    norm_kinds: list[str] = Field(
        default_factory=list,
        description="normalisation kinds whose γ/β norm-only evaluation trained: batch, instance, group, layer; "
        "'+affine-inserted' where the layers have no affine and an identity one was inserted for the evaluation",
    )
    norm_parameters: int | None = Field(default=None, description="γ and β trained (inserted affines included)")
    trained_parameters: int | None = Field(
        default=None, description="every parameter norm-only evaluation trained: γ/β plus the re-initialised head"
    )
    inserted_affines: list[str] = Field(
        default_factory=list,
        description="layers without affine after which an identity affine was inserted (not in the checkpoint)",
    )
    format: str | None = Field(
        default=None, description="the candidate's file format (safetensors, pytorch, torchscript, onnx, nnunet, ...); "
        "None for a control and until the entry has run",
    )
    conversion: dict[str, Any] | None = Field(
        default=None,
        description="a converted graph's report (ONNX, or TorchScript exported in the sandbox): operators, norms "
        "found, norms without affine (identity affines inserted), the head chosen and by which rule, spatial dims, "
        "the op set and producer, and (converted) how a TorchScript archive became the graph; None for a network "
        "BNRank rebuilds itself",
    )
    tie_group: int | None = Field(
        default=None, description="entries with the same group cannot be told apart at this budget (1 = the top)"
    )
    p_best: float | None = Field(default=None, description="share of bootstrap resamples in which this entry leads")
    tied_with: list[str] = Field(default_factory=list, description="names of the entries this one is tied with")
    halving_round: int | None = Field(
        default=None,
        description="successive halving: the round this entry is run for, once finished the round it stopped in "
        "(later rounds rank first); None without halving",
    )
    stage: Literal["race"] | None = Field(
        default=None, description="the cascade's stage: None for norm-only evaluation, race for a fine-tuning racer"
    )
    seed: int | None = Field(default=None, description="the seed this row ran at (cascade controls and racers)")
    gamma_change: float | None = Field(
        default=None, description="mean |Δγ| over every channel during BN-only training (γ summary after_bn)"
    )


class RankingOut(BaseModel):
    job: JobOut
    entries: list[EntryOut] = Field(description="ranked entries first (best first), then failed/unfinished ones")
    stability: dict[str, Any] | None = Field(description="order at part of the budget against the final order")
    ties: dict[str, Any] | None = Field(
        default=None,
        description="tie guidance once finished: top_group (tied with rank 1), groups, p_top_is_best, method",
    )
    halving: dict[str, Any] | None = Field(
        default=None,
        description="successive halving once finished: each round's steps and candidates, the candidate steps "
        "spent (every round re-trains from step 0) and what a run without halving would have spent",
    )
    cascade: dict[str, Any] | None = Field(
        default=None,
        description="the cascade strategy once finished: its stages (norm-only gains over seeded controls with the "
        "noise floor; the fine-tuning race, who was cut in which round and why), the stop rule, the verdict (leader, "
        "P(best), tied group, evidence) and the cost against the budget cap",
    )


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


class Unready(ErrorOut):
    """``/readyz`` when a backing service is down: the error shape, plus each check."""

    status: str
    checks: dict[str, str] = Field(default_factory=dict)


# ------------------------------------------------------------------------------------------ leaderboards


class ScoreRef(BaseModel):
    """One candidate's score in one ranking, and the job it came from."""

    job_id: str
    entry_id: str
    job_status: JobStatus
    job_created_at: datetime
    finished_at: datetime | None
    score: float
    rank: int | None = Field(description="its rank in that job (None until the job finished)")
    steps: int = Field(description="steps it was trained: scores taken at different budgets are not comparable")
    control_score: float | None = Field(description="score of the random-init control of its architecture, same job")


class LeaderboardRow(BaseModel):
    checkpoint_id: str
    name: str
    architecture: str
    runs: int = Field(description="scored entries of this checkpoint on the dataset, over all rankings")
    best: ScoreRef
    latest: ScoreRef


class CheckpointResultOut(BaseModel):
    """One ranking entry of a checkpoint, with the dataset and the job it belongs to."""

    job_id: str
    job_status: JobStatus
    job_created_at: datetime
    dataset_id: str | None = Field(description="None once the dataset was deleted")
    dataset_name: str | None
    entry_id: str
    status: Literal["queued", "running", "ok", "failed", "cancelled"]
    rank: int | None
    score: float | None
    dice_per_class: dict[str, float | None]
    steps: int
    seconds: float
    control_score: float | None = Field(description="score of the random-init control of its architecture, same job")
    finished_at: datetime | None
    error: str | None
    norm_kinds: list[str] = Field(default_factory=list, description="normalisation kinds norm-only evaluation trained")
