"""Models Genesis pretraining's options (`bnrank pretrain`), declared once: the command's flags come from here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bnrank.engine.options import option, three_sides, validate

MODALITIES = ("MR", "CT")


@dataclass
class PretrainConfig:
    """What a pretraining run does; ``build_kwargs`` (the network's build options) is not a flag of its own."""

    architecture: str = option("unet3d", help="registered architecture", api=False)
    build_kwargs: dict[str, Any] = field(default_factory=dict)
    steps: int = option(200, help="training steps", ge=1, le=1_000_000, api=False)
    patch_size: tuple[int, int, int] = option(
        (32, 32, 32), help="patch side(s) in voxels: one or three", ge=8, le=1024, api=False
    )
    batch_size: int = option(4, help="patches per step", ge=1, le=256, api=False)
    lr: float = option(1e-3, help="Adam learning rate", gt=0, le=10, api=False)
    seed: int = option(0, help="seed of the initial weights and the corruptions", ge=0, le=2**31 - 1, api=False)
    modality: str = option("MR", help="MR: z-score; CT: window → [0,1]", choices=MODALITIES, api=False)
    device: str = option("cpu", help="cpu or cuda", api=False)
    precision: str = option(
        "auto",
        help="bf16 autocast where the hardware has it (auto), or fp32 / bf16",
        choices=("auto", "fp32", "bf16"),
        api=False,
    )
    log_every: int = option(10, help="report the loss every N steps", ge=1, api=False, cli=False)

    def __post_init__(self) -> None:
        given = self.patch_size
        self.patch_size = three_sides(given if isinstance(given, int) else tuple(int(p) for p in given))
        validate(self)
