"""Command-line flags generated from the engine's option declarations (bnrank/engine/options.py).

`TrainConfig`, `RankConfig`, `AlchemyConfig`, `ProbeConfig` and `PretrainConfig` (bnrank/engine/configs/)
are the only lists of these options: a flag's name, type, default, help and bounds come from the field, so
a default changed in the engine shows in `--help` and is what the command runs with. Local commands default
every flag to the declared default; remote commands default every flag to None, which means "the
service's default", and send only what the user gave.

Bounds are checked after parsing (with the same `problems` the engine and the API use), not by argparse, so
a bad value is an ``error: ...`` line and exit status 2 from `main`, like every other refused request.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.errors import BNRankError
from bnrank.engine.options import Option, offered, problems, three_sides

C = TypeVar("C")

Target = argparse.ArgumentParser | argparse._ArgumentGroup


def local_options(cls: type) -> tuple[Option, ...]:
    """The options of ``cls`` a local command offers: every one declared for the command line."""
    return offered(cls, "cli")


def remote_options(cls: type) -> tuple[Option, ...]:
    """The options of ``cls`` a remote command offers: declared for the command line and accepted by the API
    (anything else the service would refuse as an unknown field)."""
    return tuple(o for o in offered(cls, "cli") if o.spec.api)


def _is_sides(opt: Option) -> bool:
    """A patch-size-like option: three whole numbers, given on the command line as one or three."""
    return typing.get_origin(opt.base_type) is tuple and typing.get_args(opt.base_type) == (int, int, int)


def sides(given: list[int]) -> tuple[int, int, int]:
    """A patch size as typed after a ``nargs="+"`` flag (one side or three), as three sides."""
    return three_sides(given[0] if len(given) == 1 else given)


def _sequence_item(opt: Option) -> type | None:
    """The element type of a tuple or list option, None for a scalar one."""
    if typing.get_origin(opt.base_type) in (tuple, list):
        return typing.get_args(opt.base_type)[0]
    return None


def add_flags(
    target: Target,
    opts: Iterable[Option],
    *,
    defaults: Mapping[str, Any] | None = None,
    service_default: bool = False,
) -> None:
    """One flag per option, its destination the field's name.

    ``defaults`` overrides declared defaults (alchemy's fine-tuning budget); ``service_default`` makes every
    default None, for commands whose unset options the service fills in. Booleans keep the spelling users
    know: ``--no-x`` for an option on by default, ``--x`` for one off, and both for one whose None means
    "decided by another option" (maximization).
    """
    for opt in opts:
        default = None if service_default else (defaults or {}).get(opt.name, opt.default)
        text = opt.spec.help.replace("%", "%%")
        if opt.base_type is bool:
            _add_switch(target, opt, default, text)
            continue
        kwargs: dict[str, Any] = {"dest": opt.name, "default": default, "choices": opt.spec.choices}
        item = _sequence_item(opt)
        if item is not None:
            kwargs.update(type=item, nargs="+")
            kwargs["default"] = list(default) if default is not None else None
        else:
            kwargs["type"] = opt.base_type
        if default is not None:
            text += " (default: %(default)s)"
        target.add_argument(opt.flag, help=text, **kwargs)


def _add_switch(target: Target, opt: Option, default: bool | None, text: str) -> None:
    if opt.optional:
        target.add_argument(opt.flag, dest=opt.name, action=argparse.BooleanOptionalAction, default=default, help=text)
    elif opt.default:
        off = "--no-" + opt.flag[2:]
        target.add_argument(off, dest=opt.name, action="store_const", const=False, default=default, help=f"off: {text}")
    else:
        target.add_argument(opt.flag, dest=opt.name, action="store_const", const=True, default=default, help=text)


def values(args: argparse.Namespace, opts: Iterable[Option], *, service_default: bool = False) -> dict[str, Any]:
    """The parsed options as field values: sequences as tuples (lists for the service's JSON), a patch size
    as three sides, each checked against its declared bounds. With ``service_default`` options left unset
    (None) are left out, so the service applies its own defaults."""
    found: dict[str, Any] = {}
    for opt in opts:
        value = getattr(args, opt.name)
        if value is None and service_default:
            continue
        if isinstance(value, list):
            try:
                value = sides(value) if _is_sides(opt) else tuple(value)
            except ValueError as exc:
                raise BNRankError(f"{opt.flag}: {exc}") from exc
            if service_default:
                value = list(value)
        message = problems(value, opt)
        if message:
            raise BNRankError(f"{opt.flag}: {message}")
        found[opt.name] = value
    return found


def build(cls: type[C], args: argparse.Namespace) -> C:
    """The engine config ``cls`` from a local command's parsed flags; options not offered keep their default."""
    return cls(**values(args, local_options(cls)))


def add_budget(p: argparse.ArgumentParser, defaults: Mapping[str, Any] | None = None) -> None:
    """The training budget of a local command (TrainConfig's flags), and how the dataset is loaded and run.

    --threads, --spacing and --cache-dir are not TrainConfig fields (they set torch's threads and the
    preprocessing), so they are written out here, once for every local command that trains.
    """
    g = p.add_argument_group("budget")
    add_flags(g, local_options(TrainConfig), defaults=defaults)
    g.add_argument("--threads", type=int, default=0, help="torch threads (default: the cores this process may use)")
    g.add_argument(
        "--spacing", type=float, nargs=3, default=None, help="target spacing in mm (default: the dataset's median)"
    )
    g.add_argument("--cache-dir", default=None, help="preprocessing cache (default: inside the dataset)")


def add_remote_budget(p: argparse.ArgumentParser) -> None:
    """A remote job's budget flags (TrainConfig's, service defaults when omitted), its seed and --wait."""
    g = p.add_argument_group("budget (service defaults when omitted)")
    add_flags(g, remote_options(TrainConfig), service_default=True)
    # The seed is a TrainConfig field the API takes beside the budget rather than inside it.
    add_flags(g, [o for o in local_options(TrainConfig) if o.name == "seed"], service_default=True)
    g.add_argument("--wait", action="store_true", help="follow progress and print the result")


def remote_budget(args: argparse.Namespace) -> dict[str, Any]:
    """The budget a remote job asks for: only the flags given."""
    return values(args, remote_options(TrainConfig), service_default=True)
