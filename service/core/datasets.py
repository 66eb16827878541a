"""Registering a dataset folder by reference: containment in the data roots, then the engine's per-case check.

Registering is idempotent per owner and folder: the same folder again answers the row already there,
without reading a file, so a client retrying (or a script run twice) neither rereads every case nor
fills the list with copies. The database holds the rule too (unique ``(owner, uri)``, migration 0004): two
registrations racing past the lookup both check the folder, one insert wins, and the other answers the
winner's row. ``force`` re-checks the folder and refreshes that one row in place (same id, so the jobs
that name it keep their link) when its contents changed.
Messages speak of paths relative to the data root (`relative_to_roots`), never of the server's folders.

The check reads every volume, so it runs in a child process under a memory and a time limit
(bnrank/engine/data/check_isolated.py), with a per-volume budget on the decompressed size the header
declares (``BNRANK_MAX_VOLUME_BYTES``), and at most ``BNRANK_DATASET_CHECKS`` at once per API process: a
registration that finds no free slot within ``BNRANK_DATASET_CHECK_WAIT_S`` is answered 503.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bnrank.engine.data import DEFAULT_MAX_VOLUME_BYTES
from bnrank.engine.data import Dataset as EngineDataset
from bnrank.engine.data.check_isolated import DEFAULT_TIME_LIMIT_S, check_dataset_isolated
from bnrank.engine.errors import BNRankError
from service.core.errors import Invalid, Unavailable
from service.core.models import Dataset
from service.core.paths import PathRefused, relative_to_roots, resolve_in_roots
from service.core.s3datasets import RemoteDatasets, is_s3


@dataclass(frozen=True)
class CheckLimits:
    """What checking one dataset may cost, and how many checks run at once (``slots``, shared per process)."""

    max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    wait_s: float = 10.0
    slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(1))


def check_dataset(
    uri: str,
    declared_format: str,
    roots: list[Path],
    limits: CheckLimits | None = None,
    remote: RemoteDatasets | None = None,
) -> tuple[EngineDataset, str]:
    """The opened dataset and its fingerprint; Invalid with the reason when it cannot be used.

    Reads every file of every case, in a limited child process: call it off the event loop. A NIfTI header
    that promises more voxels than ``limits.max_volume_bytes`` is not read: its case becomes a problem.
    Unavailable (503) when every check slot stays busy for ``limits.wait_s``. An ``s3://`` dataset is checked
    on this host's copy of it (service/core/s3datasets.py).
    """
    limits = limits or CheckLimits()
    folder = _remote(remote, uri).sync(uri) if is_s3(uri) else resolve_dataset_folder(uri, roots)
    if not limits.slots.acquire(timeout=limits.wait_s):
        raise Unavailable("every dataset check slot is busy (registrations are checked a few at a time); retry shortly")
    try:
        checked = check_dataset_isolated(
            folder, max_volume_bytes=limits.max_volume_bytes, time_limit_s=limits.time_limit_s
        )
    except BNRankError as exc:
        raise Invalid(relative_to_roots(str(exc), roots)) from exc
    finally:
        limits.slots.release()
    dataset, fingerprint = checked.dataset, checked.fingerprint
    if declared_format != "auto" and dataset.layout != declared_format:
        raise Invalid(f"uri {uri!r} holds a {dataset.layout} dataset, but format {declared_format!r} was declared")
    if len(dataset.cases) < 2:
        problems = "; ".join(f"{p.case_id}: {p.message}" for p in dataset.problems[:5])
        raise Invalid(
            relative_to_roots(
                f"dataset {folder} has {len(dataset.cases)} usable case(s); training and validation need at "
                f"least 2. Problems: {problems}",
                roots,
            )
        )
    return dataset, fingerprint


def _remote(remote: RemoteDatasets | None, uri: str) -> RemoteDatasets:
    if remote is None:
        bucket = uri.strip()[len("s3://") :].split("/", 1)[0]
        raise Invalid(
            f"uri {uri!r}: bucket {bucket!r} is not one datasets may come from; allowed: none "
            "(BNRANK_DATASET_BUCKETS is empty)"
        )
    return remote


def dataset_key(uri: str, roots: list[Path], remote: RemoteDatasets | None = None) -> str:
    """What a registration is recorded under: the canonical s3:// URI, or the resolved folder."""
    return _remote(remote, uri).canonical(uri)[0] if is_s3(uri) else str(resolve_dataset_folder(uri, roots))


def resolve_dataset_folder(uri: str, roots: list[Path]) -> Path:
    """The folder ``uri`` names inside the data roots, or Invalid saying why not (no file is read)."""
    try:
        return resolve_in_roots(uri, roots)
    except PathRefused as exc:
        raise Invalid(str(exc)) from exc


def registered(session: Session, owner: str, folder: Path | str) -> Dataset | None:
    """The owner's latest registration of this (resolved) folder or canonical s3:// URI, if any."""
    query = select(Dataset).where(Dataset.owner == owner, Dataset.uri == str(folder))
    return session.scalars(query.order_by(Dataset.created_at.desc()).limit(1)).first()


def register_dataset(
    session: Session,
    owner: str,
    name: str,
    uri: str,
    modality: str | None,
    declared_format: str,
    roots: list[Path],
    *,
    force: bool = False,
    limits: CheckLimits | None = None,
    remote: RemoteDatasets | None = None,
) -> tuple[Dataset, bool]:
    """Check every case and record the dataset: ``(row, created)``. Bad cases are listed in ``problems``.

    When the owner registered the same folder before, that row is answered (``created`` False): unchanged
    and without reading a file, or, with ``force``, refreshed from a new check of every case. A concurrent
    registration of the same folder that commits first makes this one answer (or refresh) its row.
    """
    key = dataset_key(uri, roots, remote)
    existing = registered(session, owner, key)
    if existing is not None and not force:
        _check_declared_format(uri, declared_format, existing.format)
        return existing, False
    dataset, fingerprint = check_dataset(uri, declared_format, roots, limits, remote)
    values = _row_values(dataset, fingerprint, name, modality)
    values["uri"] = key
    if existing is None:
        row = Dataset(owner=owner, **values)
        session.add(row)
        try:
            session.commit()
            return row, True
        except IntegrityError:  # the same folder, registered by a concurrent request of this owner
            session.rollback()
            existing = registered(session, owner, key)
            if existing is None:  # the constraint that fired was not (owner, uri): not a race to resolve
                raise
            if not force:
                return existing, False
    for key, value in values.items():
        setattr(existing, key, value)
    session.commit()
    return existing, False


def _check_declared_format(uri: str, declared_format: str, found: str) -> None:
    """Invalid when the client declared a format other than the one the folder holds."""
    if declared_format not in ("auto", found):
        raise Invalid(f"uri {uri!r} holds a {found} dataset, but format {declared_format!r} was declared")


def _row_values(dataset: EngineDataset, fingerprint: str, name: str, modality: str | None) -> dict[str, Any]:
    """The columns of a dataset row as the engine's check found the folder (the owner aside)."""
    return {
        "name": name,
        "uri": str(dataset.root),
        "format": dataset.layout,
        "modality": modality or dataset.modality,
        "n_cases": len(dataset.cases),
        "labels": dict(dataset.labels),
        "channel_names": list(dataset.channel_names),
        "fingerprint": fingerprint,
        "problems": [{"case_id": p.case_id, "message": p.message} for p in dataset.problems],
    }


def list_datasets(session: Session, owner: str, limit: int, offset: int) -> tuple[list[Dataset], int]:
    """A page of the owner's datasets (newest first) and the total."""
    where = Dataset.owner == owner
    total = session.scalar(select(func.count()).select_from(Dataset).where(where)) or 0
    rows = session.scalars(
        select(Dataset).where(where).order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset)
    )
    return list(rows), total
