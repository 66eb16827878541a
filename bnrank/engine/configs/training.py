"""The training budget, declared once: imports no torch, so the CLI's flags and the API's schema come cheap."""

from __future__ import annotations

from dataclasses import dataclass

from bnrank.engine.options import option, three_sides, validate

VALIDATION_MODES = ("sliding_window", "whole", "patches")
SCORES = ("dice", "soft_dice", "dice_ce")


@dataclass
class TrainConfig:
    """Budget and optimisation settings; one config is shared by every candidate of a ranking.

    The single declaration of these options: the API's budget schema and the CLI's budget flags are generated
    from the fields below (engine/options.py). Bounds are the widest a worker should accept.
    """

    max_steps: int = option(100, help="training steps per candidate", ge=1, le=1_000_000)
    patch_size: tuple[int, int, int] = option((32, 32, 32), help="patch side(s) in voxels: one or three", ge=4, le=1024)
    batch_size: int = option(2, help="patches per step", ge=1, le=256)
    val_every: int = option(10, help="validate every K steps", ge=1)
    patience: int = option(4, help="stop after Q validations without improvement", ge=1)
    lr: float = option(1e-2, help="Adam learning rate", gt=0, le=10)
    weight_decay: float = option(0.0, help="Adam weight decay", ge=0, api=False, cli=False)
    seed: int = option(0, help="seed of the patch schedule and the new head", ge=0, le=2**31 - 1, api=False)
    device: str = option("cpu", help="cpu or cuda", api=False)
    precision: str = option(
        "auto", help="bf16 autocast where the hardware has it (auto), or fp32 / bf16", choices=("auto", "fp32", "bf16")
    )
    score_window: int = option(3, help="validations averaged into the score", ge=1, api=False, cli=False)
    foreground_ratio: float = option(
        0.5, help="share of patches centred on foreground", ge=0, le=1, api=False, cli=False
    )
    val_overlap: float = option(0.25, help="sliding-window overlap in validation", ge=0, lt=1, api=False, cli=False)
    min_delta: float = option(1e-3, help="smallest validation gain that counts", ge=0, api=False, cli=False)
    validation: str = option(
        "sliding_window",
        help="how validation predicts: a sliding window over each validation case (sliding_window), each case "
        "padded and predicted whole in one eval-mode pass (whole), or fixed seeded patches of the validation cases "
        "(patches)",
        choices=VALIDATION_MODES,
    )
    validate_at: str = option(
        "every",
        help="validate every val_every steps, patience applies (every), or only where the score is taken: the last "
        "score_window validations before each scoring step (scored; training loss is still logged every val_every)",
        choices=("every", "scored"),
    )
    val_patches: int = option(8, help="fixed validation patches when validation is 'patches'", ge=1, le=4096)
    score: str = option(
        "dice",
        help="the score: hard Dice (dice), soft Dice of the softmax, which still orders candidates stuck at Dice 0 "
        "(soft_dice), or 1 - validation DiceCE (dice_ce); hard Dice is reported beside it",
        choices=SCORES,
    )
    bn_recalibration: int = option(
        0,
        help="before each validation, re-estimate BatchNorm running statistics on this many batches of fixed "
        "training patches (train mode, momentum None, no gradient), so no source statistics reach a score; 0 = off",
        ge=0,
        le=1000,
    )

    def __post_init__(self) -> None:
        self.patch_size = three_sides(self.patch_size)
        validate(self)
