"""Pydantic models generated from the engine's option dataclasses, and the typed parameters of a job.

The engine's dataclasses (``TrainConfig``, ``AlchemyConfig``, ``ProbeConfig``) are the only place an option,
its default, its bounds and its help are written. The models here are built from those declarations, so the
API's request bodies (service/api/schemas.py), the parameters stored with a job and what the worker reads
back agree by construction, and the OpenAPI document shows the engine's own bounds and descriptions.

:class:`JobParams` (one subclass per job kind) is what ``jobs.params`` holds: the API writes it once the
request is resolved, the worker reads it back typed (`JobKind.read`, with the model its kind declares in
service/core/kinds/) and turns it into engine configs.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from bnrank.engine.alchemy import FINETUNE_DEFAULTS, AlchemyConfig
from bnrank.engine.configs.probe import ProbeConfig
from bnrank.engine.configs.ranking import RANKING_DEFAULTS, RankConfig, ranking_config
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.options import Option, offered, options, three_sides

FORBID = ConfigDict(extra="forbid")  # a misspelt option must be refused, not silently left at its default
# A whole number the engine leaves unbounded above (say ``val_every``) still gets a ceiling in the API: no
# request may carry a number the database, a loop bound or a log line could choke on, and no real budget
# comes near a billion.
INT_CEILING = 10**9


def _item_type(opt: Option, item: Any) -> Any:
    """One value of the option with the declared bounds attached, so they reach the JSON schema.

    Numbers and switches are strict: ``"5"`` or ``5.5`` for a whole number, ``"yes"`` for a switch, are
    refused rather than coerced, so the request the document describes is the only one accepted.
    """
    spec = opt.spec
    bounds = {k: getattr(spec, k) for k in ("ge", "gt", "le", "lt") if getattr(spec, k) is not None}
    if item in (int, float, bool):
        bounds["strict"] = True
    if item is float:
        bounds["allow_inf_nan"] = False
    if item is int and "le" not in bounds and "lt" not in bounds:
        bounds["le"] = INT_CEILING
    return Annotated[item, Field(**bounds)] if bounds else item


def _value_type(opt: Option) -> tuple[Any, dict[str, Any]]:
    """The pydantic type of an option and the extra Field arguments its shape needs."""
    base, spec = opt.base_type, opt.spec
    if spec.choices is not None:
        kind: Any = Literal[spec.choices]  # type: ignore[valid-type]
        return (kind | None if opt.optional else kind), {}
    args = typing.get_args(base)
    if typing.get_origin(base) is tuple and args and args[-1] is Ellipsis:
        kind = list[_item_type(opt, args[0])]  # type: ignore[misc]
        extra = {"max_length": spec.max_items} if spec.max_items is not None else {}
        return (kind | None if opt.optional else kind), extra
    if typing.get_origin(base) is tuple:
        # A fixed triple (a patch size): one value stands for all three sides, normalised by the engine's rule.
        item = _item_type(opt, args[0])
        sides = Annotated[list[item], Field(min_length=1, max_length=3)]  # type: ignore[valid-type]
        kind = Annotated[item | sides, AfterValidator(lambda v: list(three_sides(v)))]  # type: ignore[valid-type]
        return (kind | None if opt.optional else kind), {}
    item = _item_type(opt, base)
    return (item | None if opt.optional else item), {}


def field_of(opt: Option, default: Any = None) -> tuple[Any, Any]:
    """``(type, FieldInfo)`` for ``create_model``: the option's type, default, bounds and help."""
    kind, extra = _value_type(opt)
    value = opt.default if default is None else default
    if isinstance(value, tuple):
        value = list(value)
    return kind, Field(default=value, description=opt.spec.help, **extra)


def fields_of(cls: type, surface: str = "api", defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Field definitions of every option of ``cls`` offered on ``surface``, defaults overridable."""
    defaults = defaults or {}
    return {o.name: field_of(o, defaults.get(o.name)) for o in offered(cls, surface)}


def option(cls: type, name: str) -> Option:
    """One declared option of ``cls`` by name, wherever it is offered (e.g. the seed, which the API asks for
    beside the budget rather than in it)."""
    return next(o for o in options(cls) if o.name == name)


def model_of(
    cls: type, name: str, doc: str, *, defaults: Mapping[str, Any] | None = None, base: type[BaseModel] | None = None
) -> type[BaseModel]:
    """A request model holding every API option of ``cls``; unknown fields are refused."""
    model = create_model(  # type: ignore[call-overload]
        name, __base__=base, __config__=None if base else FORBID, __doc__=doc, **fields_of(cls, defaults=defaults)
    )
    return model  # type: ignore[no-any-return]


Budget = model_of(TrainConfig, "Budget", "Per-candidate training budget (the engine's TrainConfig).")
RankingBudget = model_of(
    TrainConfig,
    "RankingBudget",
    "Per-candidate BN-only budget of a ranking: the engine's TrainConfig with the ranking defaults set from the "
    "tuning task (RANKING_DEFAULTS, bench/preregistration.json).",
    defaults=RANKING_DEFAULTS,
)
AlchemyBudget = model_of(
    TrainConfig,
    "AlchemyBudget",
    "Fine-tuning budget: all parameters train, so a smaller learning rate than a ranking's BN-only one.",
    defaults=FINETUNE_DEFAULTS,
)
AlchemyOptions = model_of(
    AlchemyConfig, "AlchemyOptions", "Network alchemy's steps and their switches (the engine's AlchemyConfig)."
)
ProbeOptions = model_of(ProbeConfig, "ProbeOptions", "The γ-clipping probe's options (the engine's ProbeConfig).")
_SEED_TYPE, _SEED_FIELD = field_of(option(TrainConfig, "seed"))


class JobParams(BaseModel):
    """What every job was asked for: the training budget and its seed."""

    model_config = FORBID

    budget: Budget = Field(default_factory=Budget)  # type: ignore[valid-type]
    seed: _SEED_TYPE = _SEED_FIELD  # type: ignore[valid-type]

    def train_config(self, device: str = "cpu") -> TrainConfig:
        """The engine config of the budget (raises ValueError when the values do not make one)."""
        return TrainConfig(**self.budget.model_dump(), seed=self.seed, device=device)  # type: ignore[attr-defined]

    def check(self) -> None:
        """Build every engine config the job will use, so a bad combination fails now, not in the worker."""
        self.train_config()


RankOptions = model_of(
    RankConfig,
    "RankOptions",
    "How candidates are ranked beside their budget (the engine's RankConfig): successive halving and tie guidance.",
)


class RankingParams(JobParams):
    budget: RankingBudget = Field(default_factory=RankingBudget)  # type: ignore[valid-type]
    control: bool = Field(default=True, strict=True, description="also rank a random-init copy of each architecture")
    ranking: RankOptions = Field(default_factory=RankOptions)  # type: ignore[valid-type]

    def train_config(self, device: str = "cpu") -> TrainConfig:
        """The ranking budget: RANKING_DEFAULTS under the request's values (options the API does not offer, such
        as the score window, keep the ranking's value, not TrainConfig's)."""
        return ranking_config(**self.budget.model_dump(), seed=self.seed, device=device)  # type: ignore[attr-defined]

    def rank_config(self) -> RankConfig:
        return RankConfig(**self.ranking.model_dump())  # type: ignore[attr-defined]

    def check(self) -> None:
        super().check()
        if self.rank_config().strategy == "cascade" and not self.control:
            raise ValueError("the cascade strategy scores candidates against their random-init controls: keep control")


class FoldParams(JobParams):
    """A job on one checkpoint, run once per fold (alchemy, probe)."""

    checkpoint_id: str = Field(min_length=1, max_length=64)
    folds: int = Field(
        default=1, ge=1, le=20, strict=True, description="k-fold cross-validation when above 1 (one task each)"
    )


class AlchemyParams(FoldParams):
    budget: AlchemyBudget = Field(default_factory=AlchemyBudget)  # type: ignore[valid-type]
    options: AlchemyOptions = Field(default_factory=AlchemyOptions)  # type: ignore[valid-type]

    def alchemy_config(self) -> AlchemyConfig:
        return AlchemyConfig(**self.options.model_dump())  # type: ignore[attr-defined]

    def check(self) -> None:
        super().check()
        self.alchemy_config()


class ProbeParams(FoldParams, ProbeOptions):  # type: ignore[misc, valid-type]
    """The probe's options sit beside the budget, as in the request."""

    def probe_config(self) -> ProbeConfig:
        return ProbeConfig(**{o.name: getattr(self, o.name) for o in offered(ProbeConfig, "api")})

    def check(self) -> None:
        super().check()
        self.probe_config()
