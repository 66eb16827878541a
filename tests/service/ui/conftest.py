"""Dashboard test helpers: a signed-in HTTP client per owner (the session fixtures come from tests/service)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.service.conftest import Stack, make_checkpoint, new_key, upload


def login_token(client: httpx.Client) -> str:
    """Open the sign-in page as a browser would: its CSRF token (the client keeps the nonce cookie)."""
    page = client.get("/ui/login")
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert page.status_code == 200 and found, page.text
    return found.group(1)


def sign_in(client: httpx.Client, key: str, next_: str = "/ui/jobs") -> httpx.Response:
    """Post the sign-in form with the token of the page just shown."""
    return client.post("/ui/login", data={"api_key": key, "next": next_, "csrf_token": login_token(client)})


def signed_in_client(api: str, key: str) -> httpx.Client:
    """An HTTP client that signed in through /ui/login with ``key`` and keeps the session cookie."""
    client = httpx.Client(base_url=api, timeout=60)
    response = sign_in(client, key)
    assert response.status_code == 303 and response.headers["location"] == "/ui/jobs", response.text
    return client


@pytest.fixture(scope="session")
def ui_keys(stack: Stack) -> dict[str, str]:
    """Keys of two owners of the dashboard tests: alice (the owner of the shared ranking) and mallory."""
    return {"alice": new_key(stack, "alice"), "mallory": new_key(stack, "mallory")}


@pytest.fixture(scope="session")
def alice_ui(api: str, ui_keys: dict[str, str]) -> Iterator[httpx.Client]:
    client = signed_in_client(api, ui_keys["alice"])
    yield client
    client.close()


@pytest.fixture(scope="session")
def mallory_ui(api: str, ui_keys: dict[str, str]) -> Iterator[httpx.Client]:
    client = signed_in_client(api, ui_keys["mallory"])
    yield client
    client.close()


XSS_NAME = "<script>alert(1)</script>"


@pytest.fixture(scope="session")
def xss_checkpoint(alice: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A checkpoint of alice's whose name is a script tag (its own bytes, so the name is not deduplicated away)."""
    path = make_checkpoint(tmp_path_factory.mktemp("xss") / "xss.safetensors", seed=13)
    response = upload(alice, path, modality="MR", name=XSS_NAME)
    assert response.status_code in (200, 201), response.text
    assert response.json()["name"] == XSS_NAME
    return response.json()["id"]
