"""A small synchronous client for the BNRank REST API (used by `bnrank remote`, `bnrank demo`, the bench).

It lives with the command line, its main user, rather than in the service it talks to. The module itself
imports only httpx; it speaks HTTP and JSON and knows nothing of the service's code.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")


class ApiError(Exception):
    """The service answered with an error; ``detail`` is its explanation."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


def zip_folder(folder: Path, out: Any) -> None:
    """Write `folder` (an nnU-Net model folder, a MONAI bundle) as a zip the service reads by its contents.

    Entries are stored, not deflated: weights barely compress and the service bounds inflation anyway. Links
    are left out (the service refuses them in a zip), so nothing outside the folder is ever sent.
    """
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not (Path(root) / d).is_symlink())
            for name in sorted(files):
                file = Path(root) / name
                if not file.is_symlink():
                    archive.write(file, file.relative_to(folder).as_posix())


@contextmanager
def _as_upload(path: Path) -> Iterator[Any]:
    """The bytes to send for `path`: the file itself, or a folder zipped into a temporary file first."""
    if not path.is_dir():
        with path.open("rb") as f:
            yield f
        return
    with tempfile.TemporaryFile(suffix=".zip") as f:
        zip_folder(path, f)
        f.seek(0)
        yield f


class Client:
    def __init__(self, url: str, key: str | None, *, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    @staticmethod
    def _check(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except (ValueError, AttributeError):
                detail = response.text
            raise ApiError(response.status_code, str(detail))
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self._check(self.http.get(path, params={k: v for k, v in params.items() if v is not None}))

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._check(self.http.post(path, json=body or {}))

    # ------------------------------------------------------------------------------------- resources

    def upload_checkpoint(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        modality: str | None = None,
        architecture: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Upload a file (httpx streams it from disk); the service answers 201, or 200 for a re-upload.
        ``options`` are the per-checkpoint ones (`CandidateOptions`: head), sent where given.

        Sent as the raw body with the fields in the query, the service's faster path (nothing to parse;
        docs/benchmarks.md, issue 14) rather than as a multipart form.
        """
        path = Path(path)
        fields = {"name": name or path.name}
        if modality:
            fields["modality"] = modality
        if architecture:
            fields["architecture"] = architecture
        fields.update({k: str(v) for k, v in (options or {}).items() if v is not None})
        with _as_upload(path) as f:
            response = self.http.post(
                "/v1/checkpoints", params=fields, content=f, headers={"Content-Type": "application/octet-stream"}
            )
        return self._check(response)

    def add_dataset(self, name: str, uri: str, *, modality: str | None = None, format: str = "auto") -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "uri": uri, "format": format}
        if modality:
            body["modality"] = modality
        return self.post("/v1/datasets", body)

    def rank(
        self,
        dataset_id: str,
        checkpoint_ids: list[str],
        *,
        budget: dict[str, Any] | None = None,
        seed: int | None = None,
        control: bool = True,
        ranking: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Queue a ranking; a budget, seed or ranking option (halving, ties) left out takes the service's default."""
        body: dict[str, Any] = {"dataset_id": dataset_id, "checkpoint_ids": checkpoint_ids, "control": control}
        if seed is not None:
            body["seed"] = seed
        if budget:
            body["budget"] = budget
        if ranking:
            body["ranking"] = ranking
        return self.post("/v1/rankings", body)

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Server-sent events of a job, as (event name, data), until the service closes the stream."""
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(60.0, read=None)) as resp:
            if resp.status_code >= 400:
                resp.read()
                self._check(resp)
            name, data = "message", []
            for line in resp.iter_lines():
                if not line:
                    if data:
                        yield name, json.loads("\n".join(data))
                    name, data = "message", []
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())

    def wait(self, job_id: str, on_progress: Any = None) -> dict[str, Any]:
        """Follow a job's events until it ends; returns the final job."""
        for name, data in self.events(job_id):
            if on_progress is not None:
                on_progress(data)
            if name == "end":
                break
        return self.get(f"/v1/jobs/{job_id}")
