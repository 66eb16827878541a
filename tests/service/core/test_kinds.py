"""The registry of job kinds is what the rest reads: every kind has its worker task, its API collection, its
dashboard page, its metrics label and a table of its own, and nothing else spells the set out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.core.kinds import KIND_NAMES, KINDS, kind_of, read_params, register, work_tables
from service.core.models import Base

ROOT = Path(__file__).resolve().parents[3]


def test_every_kind_has_its_own_table_task_and_names() -> None:
    assert KIND_NAMES == ("ranking", "alchemy", "probe")
    assert len(work_tables()) == len(KINDS)  # no two kinds share a table of units of work
    assert {t.__tablename__ for t in work_tables()} == {"ranking_entries", "alchemy_results", "probe_results"}
    for kind in KINDS.values():
        assert kind.rows.__table__ is Base.metadata.tables[kind.rows.__tablename__]
        assert {"id", "job_id", "status", "progress", "attempts", "task_id", "heartbeat_at"} <= set(
            kind.rows.__table__.c.keys()
        )
        assert kind.path.startswith("/v1/") and kind.task.startswith("bnrank.")
    assert len({k.task for k in KINDS.values()}) == len({k.path for k in KINDS.values()}) == len(KINDS)


def test_the_worker_runs_one_task_per_registered_kind() -> None:
    from worker.celery_app import app
    from worker.tasks import TASKS, UNITS

    assert [u.kind.name for u in UNITS] == list(KIND_NAMES)
    for kind in KINDS.values():
        assert TASKS[kind.name].name == kind.task and app.tasks[kind.task].run.__name__ == kind.task_label


def test_the_api_serves_every_kind_at_its_path_and_filters_by_the_registry(tmp_path: Path) -> None:
    from service.api.app import create_app
    from service.core.config import Settings

    spec = create_app(Settings(home=tmp_path, database_url="", broker_url="", data_roots=[tmp_path])).openapi()
    for kind in KINDS.values():
        assert kind.path in spec["paths"] and f"{kind.path}/{{job_id}}" in spec["paths"], kind.name
    kind_filter = next(p for p in spec["paths"]["/v1/jobs"]["get"]["parameters"] if p["name"] == "kind")
    assert kind_filter["schema"]["anyOf"][0]["enum"] == list(KIND_NAMES)


def test_a_kind_is_registered_once_and_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register(kind_of("probe"))
    with pytest.raises(KeyError):
        kind_of("finetune")
    with pytest.raises(ValueError, match="max_step"):
        read_params("ranking", {"budget": {"max_step": 4}})


def test_no_module_outside_the_registry_spells_out_the_set_of_kinds() -> None:
    """A literal set or mapping of the three names (the way they were written in seven places) is the registry's."""
    spelled = re.compile(r"""["']ranking["'][^\n]{0,80}["']alchemy["'][^\n]{0,80}["']probe["']""")
    found = [
        str(path.relative_to(ROOT))
        for folder in ("service", "worker", "bnrank/cli")
        for path in (ROOT / folder).rglob("*.py")
        if spelled.search(path.read_text()) and "kinds" not in path.parts
    ]
    assert found == []
