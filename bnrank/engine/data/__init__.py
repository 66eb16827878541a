"""Datasets: open an nnU-Net v2 or MSD folder, keep the good cases, name the bad ones, preprocess once.

`open_dataset` is the only entry point callers need before `preprocess`; it never raises for a
single bad case (that becomes a `Problem`), only when nothing usable is left.
"""

from __future__ import annotations

from pathlib import Path

from bnrank.engine.data.checks import DEFAULT_MAX_VOLUME_BYTES, check_case, check_cases, volume_bytes
from bnrank.engine.data.layouts import (
    Case,
    Dataset,
    Problem,
    channel_modality,
    dataset_modality,
    list_dataset,
)
from bnrank.engine.data.preprocess import (
    PreprocessConfig,
    PreprocessedCase,
    PreprocessedDataset,
    compute_fingerprint,
    default_cache_root,
    median_spacing,
    preprocess,
)
from bnrank.engine.errors import DatasetError

__all__ = [
    "DEFAULT_MAX_VOLUME_BYTES",
    "Case",
    "Dataset",
    "PreprocessConfig",
    "PreprocessedCase",
    "PreprocessedDataset",
    "Problem",
    "channel_modality",
    "check_case",
    "check_cases",
    "compute_fingerprint",
    "dataset_modality",
    "default_cache_root",
    "list_dataset",
    "median_spacing",
    "open_dataset",
    "preprocess",
    "volume_bytes",
]

# How many problems a "nothing usable" error quotes; the full list is on Dataset.problems.
_PROBLEMS_IN_MESSAGE = 5


def open_dataset(
    root: str | Path, *, check: bool = True, max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES
) -> Dataset:
    """Parse dataset.json, list the cases and (with `check`) read every file to keep only good ones.

    `check=False` only does what needs no image reads (paths, containment, existence); use it when
    the dataset was checked before and opening it again must be fast. With `check`, a file whose header
    implies more than `max_volume_bytes` of voxel data is not read; its case becomes a Problem.
    """
    dataset = list_dataset(root)
    if check:
        good, problems = check_cases(
            dataset.cases,
            dataset.root,
            dataset.labels,
            len(dataset.channel_names),
            max_volume_bytes=max_volume_bytes,
        )
        dataset.cases = good
        dataset.problems.extend(problems)
    if not dataset.cases:
        shown = "; ".join(f"{p.case_id}: {p.message}" for p in dataset.problems[:_PROBLEMS_IN_MESSAGE])
        more = len(dataset.problems) - _PROBLEMS_IN_MESSAGE
        suffix = f" (and {more} more)" if more > 0 else ""
        detail = f": {shown}{suffix}" if shown else ": no cases are listed"
        raise DatasetError(f"dataset {dataset.root} has no usable case{detail}")
    return dataset
