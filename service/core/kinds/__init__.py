"""The registry of job kinds: every kind the service runs, each declared once in its own module.

Submission, cancel, progress, recovery, metrics, the API's job filter and result links, and the dashboard read
their kinds from here. Adding a kind is its module here (a `JobKind`), its worker `Unit` (listed in
worker/tasks.py), its routes, and one registration line below; docs/layout.md lists the files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.core.kinds import alchemy, probe, ranking
from service.core.kinds.base import JobKind
from service.core.params import JobParams

KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    if kind.name in KINDS:
        raise ValueError(f"job kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind
    return kind


register(ranking.KIND)
register(alchemy.KIND)
register(probe.KIND)

KIND_NAMES: tuple[str, ...] = tuple(KINDS)


def kind_of(name: str) -> JobKind:
    """The kind of a stored job (KeyError for a name no version of the service wrote)."""
    return KINDS[name]


def read_params(kind: str, stored: Mapping[str, Any] | None) -> JobParams:
    """A stored job's params, typed by its kind (see `JobKind.read`)."""
    return kind_of(kind).read(stored)


def work_tables() -> list[type[Any]]:
    """Every table of units of work, once each (for the recovery sweep and the metrics)."""
    return list(dict.fromkeys(k.rows for k in KINDS.values()))
