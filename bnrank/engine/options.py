"""Option sets declared once, as engine dataclasses whose fields carry their help text and bounds.

The API's request schemas, the job parameters stored with a job and the CLI's flags are all generated from
these declarations (service/api/schemas.py, bnrank/cli/options.py), so a default, a bound or a new option is
changed in one place and every surface agrees. Each field made with :func:`option` says where it is offered:
``api`` (REST request bodies) and ``cli`` (command-line flags); a field offered nowhere is an engine knob.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_KEY = "bnrank.option"


@dataclass(frozen=True)
class Spec:
    """What a surface needs to offer one field: a sentence of help, numeric bounds, the allowed values."""

    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    max_items: int | None = None
    api: bool = True
    cli: bool = True


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    max_items: int | None = None,
    api: bool = True,
    cli: bool = True,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field that is also an option. Bounds apply to each element of a sequence value;
    ``max_items`` bounds the length of a sequence, so a surface can refuse a long list before any per-item work."""
    spec = Spec(help, ge, gt, le, lt, tuple(choices) if choices is not None else None, max_items, api, cli)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: spec})


@dataclass(frozen=True)
class Option:
    """One declared field, resolved: its name, its type (annotations evaluated), its default and its spec."""

    name: str
    type: Any
    default: Any
    spec: Spec

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def optional(self) -> bool:
        """None is an accepted value (it means "derive it", see the field's help)."""
        return type(None) in typing.get_args(self.type)

    @property
    def base_type(self) -> Any:
        """The type without its ``| None``."""
        args = [a for a in typing.get_args(self.type) if a is not type(None)]
        return args[0] if self.optional and len(args) == 1 else self.type


@functools.cache
def options(cls: type) -> tuple[Option, ...]:
    """Every :func:`option` field of a dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_KEY)
        if spec is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        found.append(Option(f.name, hints[f.name], default, spec))
    return tuple(found)


def offered(cls: type, surface: str) -> tuple[Option, ...]:
    """The options of ``cls`` offered on one surface: ``"api"`` or ``"cli"``."""
    return tuple(o for o in options(cls) if getattr(o.spec, surface))


def problems(value: Any, opt: Option) -> str | None:
    """Why ``value`` is not allowed for ``opt``, or None. The one bounds check every surface relies on."""
    if value is None:
        return None if opt.optional else f"{opt.name} is required"
    if opt.spec.choices is not None and value not in opt.spec.choices:
        allowed = ", ".join(repr(c) for c in opt.spec.choices)
        return f"{opt.name} must be one of {allowed}, got {value!r}"
    items = value if isinstance(value, list | tuple) else (value,)
    if opt.spec.max_items is not None and len(items) > opt.spec.max_items:
        return f"{opt.name} takes at most {opt.spec.max_items} values, got {len(items)}"
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            return f"{opt.name} must be a finite number, got {v!r}"
        s = opt.spec
        if s.ge is not None and v < s.ge:
            return f"{opt.name} must be at least {s.ge:g}, got {value!r}"
        if s.gt is not None and v <= s.gt:
            return f"{opt.name} must be greater than {s.gt:g}, got {value!r}"
        if s.le is not None and v > s.le:
            return f"{opt.name} must be at most {s.le:g}, got {value!r}"
        if s.lt is not None and v >= s.lt:
            return f"{opt.name} must be less than {s.lt:g}, got {value!r}"
    return None


def validate(obj: Any, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming the first field of ``obj`` whose value breaks its declared bounds."""
    for opt in options(type(obj)):
        message = problems(getattr(obj, opt.name), opt)
        if message:
            raise error(message)


def three_sides(value: int | Sequence[int]) -> tuple[int, int, int]:
    """A patch size given as one side or three, as three sides: the one normaliser every surface uses."""
    sides = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(sides) != 3:
        raise ValueError(f"patch_size takes 1 or 3 numbers, got {len(sides)}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in sides):
        raise ValueError(f"patch_size takes whole numbers, got {list(sides)}")
    return sides  # type: ignore[return-value]
