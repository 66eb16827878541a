"""Models Genesis pretraining's options (`bnrank pretrain`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODALITIES = ("MR", "CT")


@dataclass
class PretrainConfig:
    architecture: str = "unet3d"
    build_kwargs: dict[str, Any] = field(default_factory=dict)
    steps: int = 200
    patch_size: tuple[int, int, int] = (32, 32, 32)
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 0
    modality: str = "MR"
    device: str = "cpu"
    precision: str = "auto"
    log_every: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.patch_size, int):
            self.patch_size = (self.patch_size,) * 3
        self.patch_size = tuple(int(p) for p in self.patch_size)  # type: ignore[assignment]
        if len(self.patch_size) != 3 or any(p < 8 for p in self.patch_size):
            raise ValueError(f"patch_size must be 3 sides of at least 8 voxels, got {self.patch_size}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
