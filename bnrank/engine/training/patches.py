"""The cases a run trains and validates on, and the seeded schedule of patches drawn from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from bnrank.engine.errors import TrainingError


@dataclass
class Volume:
    """One preprocessed case ready for training: image [C, X, Y, Z] float32, label [X, Y, Z] as class indices."""

    case_id: str
    image: np.ndarray
    label: np.ndarray



@dataclass
class TaskData:
    """Train and validation volumes of a task plus the class names, in index order (background first)."""

    train: list[Volume]
    val: list[Volume]
    class_names: list[str]
    in_channels: int = field(init=False)

    def __post_init__(self) -> None:
        if not self.train or not self.val:
            raise TrainingError(
                f"need at least one training and one validation case, got {len(self.train)} and {len(self.val)}"
            )
        self.in_channels = int(self.train[0].image.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded train/validation split with at least one case on each side."""
    if n < 2:
        raise TrainingError(f"a dataset needs at least 2 usable cases to train and validate, it has {n}")
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])


def pad_to(volume: Volume, patch: Sequence[int]) -> Volume:
    """Pad a case that is smaller than the patch (image with its minimum, label with background)."""
    shape = volume.label.shape
    pads = [(0, max(0, p - s)) for p, s in zip(patch, shape, strict=True)]
    if not any(after for _, after in pads):
        return volume
    image = np.stack([np.pad(c, pads, constant_values=float(c.min())) for c in volume.image])
    return Volume(volume.case_id, image, np.pad(volume.label, pads, constant_values=0))


class PatchSchedule:
    """The seeded sequence of (case, corner) patches: a pure function of the seed and the data."""

    def __init__(
        self,
        volumes: Sequence[Volume],
        patch: Sequence[int],
        batch_size: int,
        seed: int,
        foreground_ratio: float = 0.5,
    ) -> None:
        self.volumes = [pad_to(v, patch) for v in volumes]
        self.patch = tuple(patch)
        self.batch_size = batch_size
        self.foreground_ratio = foreground_ratio
        self.rng = np.random.default_rng(seed)
        # A bounded sample of foreground voxels per case keeps memory flat on large volumes.
        self.foreground = []
        for v in self.volumes:
            coords = np.argwhere(v.label > 0)
            if len(coords) > 4096:
                coords = coords[np.random.default_rng(seed).choice(len(coords), 4096, replace=False)]
            self.foreground.append(coords)

    def _corner(self, idx: int) -> tuple[int, ...]:
        shape = self.volumes[idx].label.shape
        fg = self.foreground[idx]
        if len(fg) and self.rng.random() < self.foreground_ratio:
            centre = fg[self.rng.integers(len(fg))]
        else:
            centre = [self.rng.integers(s) for s in shape]
        return tuple(int(min(max(c - p // 2, 0), s - p)) for c, p, s in zip(centre, self.patch, shape, strict=True))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for _ in range(self.batch_size):
            idx = int(self.rng.integers(len(self.volumes)))
            x, y, z = self._corner(idx)
            px, py, pz = self.patch
            v = self.volumes[idx]
            images.append(v.image[:, x : x + px, y : y + py, z : z + pz])
            labels.append(v.label[None, x : x + px, y : y + py, z : z + pz])
        return torch.from_numpy(np.stack(images)).float(), torch.from_numpy(np.stack(labels).astype(np.int64))

