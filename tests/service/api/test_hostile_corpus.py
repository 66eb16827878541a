"""The hostile-upload corpus (tests/fixtures/hostile): every crafted file and network definition is refused
with its recorded status, nothing in it runs, and no refused upload leaves a blob behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.core.objectstore import open_blob_store
from service.core.orphans import find_orphans
from tests.service.conftest import Stack, new_key, upload

CORPUS = Path(__file__).parents[2] / "fixtures" / "hostile"
MANIFEST: dict[str, Any] = json.loads((CORPUS / "manifest.json").read_text())
MARKER = Path(MANIFEST["marker"])


def _orphans(stack: Stack) -> set[str]:
    with stack.db.session() as session:
        return {o.relpath for o in find_orphans(session, open_blob_store(stack.settings))[0]}


@pytest.fixture(autouse=True)
def no_marker_before_or_after(stack: Stack) -> Any:
    MARKER.unlink(missing_ok=True)
    before = _orphans(stack)
    yield
    assert not MARKER.exists(), "a payload of the corpus ran"
    assert _orphans(stack) == before, "a refused upload left its blob behind"


@pytest.mark.parametrize("name", sorted(MANIFEST["files"]))
def test_crafted_files_are_refused(alice: httpx.Client, name: str) -> None:
    filename, status, fields = MANIFEST["files"][name]
    response = upload(alice, CORPUS / "files" / filename, **fields)
    assert response.status_code == status, (name, response.status_code, response.text)
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


@pytest.fixture(scope="module")
def mallory(stack: Stack, api: str) -> Any:
    """An owner of its own: the corpus's valid file is not already hers, so each definition itself is judged
    (an owner who holds these bytes gets 409 for any other network_def before it is read)."""
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {new_key(stack, 'mallory')}"}, timeout=60) as c:
        yield c


@pytest.mark.parametrize("name", sorted(MANIFEST["network_defs"]))
def test_hostile_network_defs_are_refused(mallory: httpx.Client, name: str) -> None:
    text, status = MANIFEST["network_defs"][name]
    response = upload(mallory, CORPUS / "files" / "valid.safetensors", name=f"def-{name}", network_def=text)
    assert response.status_code == status, (name, response.status_code, response.text)
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]
