"""From a preprocessed dataset to the train/validation volumes the training loop consumes."""

from __future__ import annotations

import numpy as np

from bnrank.engine.data import PreprocessedDataset
from bnrank.engine.training.patches import TaskData, Volume, split_indices


def class_lookup(labels: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """Class names in index order and a value→index table: dataset label values need not be contiguous."""
    ordered = sorted(labels.items(), key=lambda kv: kv[1])
    lut = np.zeros(max(v for _, v in ordered) + 1, dtype=np.int64)
    for index, (_, value) in enumerate(ordered):
        lut[value] = index
    return [name for name, _ in ordered], lut


def make_task(pre: PreprocessedDataset, *, val_fraction: float = 0.25, seed: int = 0) -> TaskData:
    names, lut = class_lookup(pre.labels)
    volumes = [
        Volume(c.case_id, c.image.astype(np.float32, copy=False), lut[c.label.astype(np.int64)].astype(np.uint8))
        for c in pre.cases
    ]
    train_idx, val_idx = split_indices(len(volumes), val_fraction, seed)
    return TaskData([volumes[i] for i in train_idx], [volumes[i] for i in val_idx], names)
