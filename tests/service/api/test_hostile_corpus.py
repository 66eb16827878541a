"""The hostile-upload corpus (tests/fixtures/hostile): every crafted file and network definition is refused
with its recorded status, nothing in it runs, and no refused upload leaves a blob behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.core.blobs import BlobStore
from service.core.orphans import find_orphans
from tests.service.conftest import Stack, upload

CORPUS = Path(__file__).parents[2] / "fixtures" / "hostile"
MANIFEST: dict[str, Any] = json.loads((CORPUS / "manifest.json").read_text())
MARKER = Path(MANIFEST["marker"])


def _orphans(stack: Stack) -> set[str]:
    with stack.db.session() as session:
        return {o.relpath for o in find_orphans(session, BlobStore(stack.settings.blobs))[0]}


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


@pytest.mark.parametrize("name", sorted(MANIFEST["network_defs"]))
def test_hostile_network_defs_are_refused(alice: httpx.Client, name: str) -> None:
    text, status = MANIFEST["network_defs"][name]
    response = upload(alice, CORPUS / "files" / "valid.safetensors", name=f"def-{name}", network_def=text)
    assert response.status_code == status, (name, response.status_code, response.text)
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]
