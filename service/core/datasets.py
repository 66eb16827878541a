"""Registering a dataset folder by reference: containment in the data roots, then the engine's per-case check."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bnrank.engine.data import Dataset as EngineDataset
from bnrank.engine.data import PreprocessConfig, compute_fingerprint, open_dataset
from bnrank.engine.errors import BNRankError
from service.core.errors import Invalid
from service.core.models import Dataset
from service.core.paths import PathRefused, resolve_in_roots


def check_dataset(uri: str, declared_format: str, roots: list[Path]) -> tuple[EngineDataset, str]:
    """The opened dataset and its fingerprint; Invalid with the reason when it cannot be used.

    Reads every file of every case: call it off the event loop.
    """
    try:
        folder = resolve_in_roots(uri, roots)
    except PathRefused as exc:
        raise Invalid(str(exc)) from exc
    try:
        dataset = open_dataset(folder)
        fingerprint = compute_fingerprint(dataset, PreprocessConfig())
    except BNRankError as exc:
        raise Invalid(str(exc)) from exc
    if declared_format != "auto" and dataset.layout != declared_format:
        raise Invalid(f"uri {uri!r} holds a {dataset.layout} dataset, but format {declared_format!r} was declared")
    if len(dataset.cases) < 2:
        raise Invalid(
            f"dataset {folder} has {len(dataset.cases)} usable case(s); training and validation need at "
            f"least 2. Problems: " + "; ".join(f"{p.case_id}: {p.message}" for p in dataset.problems[:5])
        )
    return dataset, fingerprint


def register_dataset(
    session: Session, owner: str, name: str, uri: str, modality: str | None, declared_format: str, roots: list[Path]
) -> Dataset:
    """Check every case and record the dataset; bad cases are listed in ``problems`` and left out."""
    dataset, fingerprint = check_dataset(uri, declared_format, roots)
    row = Dataset(
        owner=owner,
        name=name,
        uri=str(dataset.root),
        format=dataset.layout,
        modality=modality or dataset.modality,
        n_cases=len(dataset.cases),
        labels=dict(dataset.labels),
        channel_names=list(dataset.channel_names),
        fingerprint=fingerprint,
        problems=[{"case_id": p.case_id, "message": p.message} for p in dataset.problems],
    )
    session.add(row)
    session.commit()
    return row


def list_datasets(session: Session, owner: str, limit: int, offset: int) -> tuple[list[Dataset], int]:
    """A page of the owner's datasets (newest first) and the total."""
    where = Dataset.owner == owner
    total = session.scalar(select(func.count()).select_from(Dataset).where(where)) or 0
    rows = session.scalars(
        select(Dataset).where(where).order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset)
    )
    return list(rows), total
