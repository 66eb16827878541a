"""Option sets declared once (engine/options.py): specs read back, bounds refused by name, patch sides."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.options import offered, option, options, problems, three_sides, validate


class Refused(ValueError):
    pass


@dataclass
class Knobs:
    steps: int = option(10, help="steps", ge=1, le=100)
    rate: float = option(0.1, help="a rate", gt=0, lt=1)
    kind: str = option("a", help="a kind", choices=("a", "b"))
    sides: tuple[int, ...] = option((4,), help="sides", ge=4, max_items=3)
    hint: float | None = option(None, help="derived when None", gt=0)
    engine_only: int = option(0, help="an engine knob", api=False, cli=False)
    api_only: tuple[int, ...] = option((), help="only in requests", cli=False)
    plain: int = field(default=0)

    def __post_init__(self) -> None:
        validate(self, Refused)


def test_the_declaration_is_read_back_in_order_with_its_spec() -> None:
    found = options(Knobs)
    assert [o.name for o in found] == ["steps", "rate", "kind", "sides", "hint", "engine_only", "api_only"]
    by_name = {o.name: o for o in found}
    assert by_name["engine_only"].flag == "--engine-only" and by_name["steps"].spec.help == "steps"
    assert by_name["hint"].optional and by_name["hint"].base_type is float
    assert not by_name["steps"].optional and by_name["steps"].base_type is int
    assert by_name["api_only"].default == () and by_name["kind"].spec.choices == ("a", "b")


def test_offered_picks_the_fields_of_one_surface() -> None:
    assert [o.name for o in offered(Knobs, "api")] == ["steps", "rate", "kind", "sides", "hint", "api_only"]
    assert [o.name for o in offered(Knobs, "cli")] == ["steps", "rate", "kind", "sides", "hint"]
    cli = {o.name for o in offered(TrainConfig, "cli")}
    assert "max_steps" in cli and "weight_decay" not in cli  # an engine knob is offered nowhere


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": 0}, "steps must be at least 1, got 0"),
        ({"steps": 101}, "steps must be at most 100, got 101"),
        ({"rate": 0.0}, "rate must be greater than 0, got 0.0"),
        ({"rate": 1.0}, "rate must be less than 1, got 1.0"),
        ({"rate": float("nan")}, "rate must be a finite number"),
        ({"kind": "c"}, "kind must be one of 'a', 'b', got 'c'"),
        ({"sides": (4, 4, 4, 4)}, "sides takes at most 3 values, got 4"),
        ({"sides": (8, 2)}, "sides must be at least 4, got (8, 2)"),  # bounds hold for every element
        ({"steps": None}, "steps is required"),
        ({"hint": -1.0}, "hint must be greater than 0"),
    ],
)
def test_a_value_out_of_bounds_is_refused_with_the_fields_name(values, message) -> None:
    with pytest.raises(Refused) as caught:
        Knobs(**values)
    assert str(caught.value).startswith(message)


def test_values_within_bounds_pass_and_none_is_allowed_where_declared() -> None:
    knobs = Knobs(steps=1, rate=0.5, kind="b", sides=(4, 8, 1024), hint=None)
    assert all(problems(getattr(knobs, o.name), o) is None for o in options(Knobs))
    knobs.steps = 500  # validate() checks an object as it is now, with ValueError unless told otherwise
    with pytest.raises(ValueError, match=r"^steps must be at most 100"):
        validate(knobs)
    with pytest.raises(ValueError, match="max_steps"):  # a real declaration refuses the same way
        TrainConfig(max_steps=0)


def test_three_sides_normalises_a_patch_size() -> None:
    assert three_sides(16) == (16, 16, 16)
    assert three_sides([8, 16, 32]) == (8, 16, 32)
    assert TrainConfig(patch_size=24).patch_size == (24, 24, 24)
    with pytest.raises(ValueError, match="1 or 3 numbers, got 2"):
        three_sides((16, 16))
    for odd in ([16.5, 16, 16], [True, 16, 16]):
        with pytest.raises(ValueError, match="whole numbers"):
            three_sides(odd)
