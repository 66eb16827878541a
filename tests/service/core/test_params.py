"""The API's request schemas and the stored job parameters are generated from the engine's dataclasses.

Changing a default, a bound or a help text, or adding an option, is an edit of the engine's declaration
alone: these tests compare every generated field with the declaration it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from bnrank.engine.alchemy import FINETUNE_DEFAULTS, AlchemyConfig
from bnrank.engine.configs.probe import ProbeConfig
from bnrank.engine.configs.ranking import RANKING_DEFAULTS, RankConfig, ranking_config
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.options import Option, offered, option
from service.api.schemas import AlchemyIn, ProbeIn, RankingIn
from service.core.kinds import read_params
from service.core.params import (
    AlchemyBudget,
    AlchemyParams,
    Budget,
    ProbeParams,
    RankingBudget,
    RankingParams,
    RankOptions,
    model_of,
)

BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


def _constraints(prop: dict[str, Any]) -> dict[str, Any]:
    """Bounds and choices of a JSON-schema property, wherever pydantic put them (the value, an ``anyOf``
    member for an optional or one-or-three value, the items of a list)."""
    found: dict[str, Any] = {}
    for part in [prop, *prop.get("anyOf", [])]:
        for where in (part, part.get("items", {})):
            found.update({k: v for k, v in where.items() if k in (*BOUNDS.values(), "enum", "const")})
    return found


def _expected(opt: Option, default: Any = None) -> tuple[Any, dict[str, Any]]:
    value = opt.default if default is None else default
    bounds = {BOUNDS[k]: getattr(opt.spec, k) for k in BOUNDS if getattr(opt.spec, k) is not None}
    if opt.spec.choices is not None:
        bounds = {"enum": list(opt.spec.choices)}
    return (list(value) if isinstance(value, tuple) else value), bounds


def _follows(schema: dict[str, Any], cls: type, defaults: dict[str, Any] | None = None) -> None:
    props = schema["properties"]
    for opt in offered(cls, "api"):
        default, bounds = _expected(opt, (defaults or {}).get(opt.name))
        prop = props[opt.name]
        assert prop["default"] == default, opt.name
        assert prop["description"] == opt.spec.help, opt.name
        got = _constraints(prop)
        if "enum" in bounds and "const" in got:  # a single choice is written as a const
            got["enum"] = [got.pop("const")]
        assert {k: got.get(k) for k in bounds} == bounds, opt.name
        if opt.spec.max_items is not None:
            assert prop.get("maxItems") == opt.spec.max_items or any(
                p.get("maxItems") == opt.spec.max_items for p in prop.get("anyOf", [])
            ), opt.name


@pytest.mark.parametrize(
    ("model", "cls", "defaults"),
    [
        (Budget, TrainConfig, None),
        (AlchemyBudget, TrainConfig, FINETUNE_DEFAULTS),
        (RankingBudget, TrainConfig, RANKING_DEFAULTS),
        (RankOptions, RankConfig, None),
        (AlchemyIn, AlchemyConfig, None),
        (ProbeIn, ProbeConfig, None),
    ],
    ids=["Budget", "AlchemyBudget", "RankingBudget", "RankOptions", "AlchemyIn", "ProbeIn"],
)
def test_generated_models_follow_the_engine_declarations(model: Any, cls: type, defaults: Any) -> None:
    _follows(model.model_json_schema(), cls, defaults)


def test_the_openapi_document_carries_the_declared_defaults_and_bounds(anonymous: httpx.Client) -> None:
    schemas = anonymous.get("/openapi.json").json()["components"]["schemas"]
    max_steps = next(o for o in offered(TrainConfig, "api") if o.name == "max_steps")
    budget = schemas["Budget"]["properties"]["max_steps"]
    assert (budget["default"], budget["minimum"], budget["maximum"]) == (
        TrainConfig().max_steps,
        max_steps.spec.ge,
        max_steps.spec.le,
    )
    assert budget["description"] == max_steps.spec.help
    assert schemas["AlchemyBudget"]["properties"]["max_steps"]["default"] == FINETUNE_DEFAULTS["max_steps"]
    assert schemas["RankingBudget"]["properties"]["max_steps"]["default"] == RANKING_DEFAULTS["max_steps"]
    assert schemas["RankOptions"]["properties"]["halving_rounds"]["default"] == RankConfig().halving_rounds
    assert "batched" not in schemas["RankOptions"]["properties"]  # one task per candidate: nothing to batch
    identify = schemas["AlchemyIn"]["properties"]["identify_steps"]
    assert identify["default"] == AlchemyConfig().identify_steps == 60
    assert schemas["AlchemyIn"]["properties"]["identify_lr"]["default"] == AlchemyConfig().identify_lr == 1e-2
    _follows(schemas["Budget"], TrainConfig)
    for name in ("Budget", "AlchemyBudget", "RankingBudget", "RankOptions", "AlchemyIn", "ProbeIn", "RankingIn"):
        assert schemas[name]["additionalProperties"] is False, name


def test_a_new_option_reaches_the_schema_from_its_declaration_alone() -> None:
    @dataclass
    class Toy:
        steps: int = option(7, help="how many", ge=1, le=9)
        kind: str = option("a", help="which", choices=("a", "b"))
        hidden: int = option(3, help="engine only", api=False)

    schema = model_of(Toy, "Toy", "a made-up option set").model_json_schema()
    assert set(schema["properties"]) == {"steps", "kind"}
    _follows(schema, Toy)


def test_patch_size_takes_one_side_or_three() -> None:
    assert Budget(patch_size=16).patch_size == [16, 16, 16]  # type: ignore[attr-defined]
    assert Budget(patch_size=[8, 16, 32]).patch_size == [8, 16, 32]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="1 or 3"):
        Budget(patch_size=[16, 16])
    with pytest.raises(ValueError, match="greater than or equal to 4"):
        Budget(patch_size=2)


def test_job_params_round_trip_through_the_job_row() -> None:
    ranking = RankingIn(
        dataset_id="ds",
        checkpoint_ids=["a"],
        budget={"max_steps": 7, "patch_size": 16},
        seed=3,
        ranking={"halving_rounds": 2},
    )
    stored = ranking.params().model_dump(mode="json")
    assert set(stored) == {"budget", "seed", "control", "ranking"}
    typed = read_params("ranking", stored)
    assert isinstance(typed, RankingParams)
    assert typed.train_config() == ranking_config(max_steps=7, patch_size=(16, 16, 16), seed=3)
    assert typed.train_config().score_window == RANKING_DEFAULTS["score_window"]  # not offered, still the ranking's
    assert typed.rank_config() == RankConfig(halving_rounds=2)
    assert read_params("ranking", {"budget": {}, "seed": 0}).rank_config() == RankConfig()  # rows from before

    alchemy = AlchemyIn(dataset_id="ds", checkpoint_id="ck", threshold=0.1, folds=2)  # type: ignore[call-arg]
    typed_alchemy = read_params("alchemy", alchemy.params().model_dump(mode="json"))
    assert isinstance(typed_alchemy, AlchemyParams) and typed_alchemy.folds == 2
    assert typed_alchemy.alchemy_config() == AlchemyConfig(threshold=0.1)
    assert typed_alchemy.train_config().max_steps == FINETUNE_DEFAULTS["max_steps"]

    probe = ProbeIn(dataset_id="ds", checkpoint_id="ck", thresholds=[0.9, 0.05], draws=2)  # type: ignore[call-arg]
    typed_probe = read_params("probe", probe.params().model_dump(mode="json"))
    assert isinstance(typed_probe, ProbeParams)
    assert typed_probe.probe_config() == ProbeConfig(thresholds=(0.05, 0.9), draws=2)


def test_stored_params_of_older_rows_still_read() -> None:
    """Rows written before the typed params (a budget of a few fields, alchemy options only where set)."""
    assert read_params("ranking", {"budget": {"max_steps": 4}}).train_config().max_steps == 4
    old = {"budget": {}, "seed": 0, "folds": 1, "checkpoint_id": "ck", "options": {"mode": "finetune"}}
    assert read_params("alchemy", old).alchemy_config().mode == "finetune"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="max_step"):
        read_params("ranking", {"budget": {"max_step": 4}})
