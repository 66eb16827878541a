"""The γ-clipping probe's own options; its BN-only budget is a TrainConfig."""

from __future__ import annotations

from dataclasses import dataclass

from bnrank.engine.configs.alchemy import AlchemyError
from bnrank.engine.configs.gamma import DEFAULT_THRESHOLD
from bnrank.engine.options import option, validate

# From the default "redundant" threshold up to |γ| values that a short BN-only run does reach (see
# docs/alchemy.md: after 60 BN-only steps on the demo the smallest |γ| is about 0.4-0.5).
DEFAULT_THRESHOLDS: tuple[float, ...] = (DEFAULT_THRESHOLD, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
DEFAULT_DRAWS = 3


@dataclass
class ProbeConfig:
    """The probe's own options (its BN-only budget is a TrainConfig); the single declaration of them."""

    thresholds: tuple[float, ...] = option(DEFAULT_THRESHOLDS, help="|γ| cut-offs", gt=0, max_items=32)
    draws: int = option(DEFAULT_DRAWS, help="random clippings averaged per threshold", ge=1, le=20)

    def __post_init__(self) -> None:
        validate(self, AlchemyError)
        if not self.thresholds:
            raise AlchemyError("thresholds needs at least one value")
        self.thresholds = tuple(sorted({float(t) for t in self.thresholds}))
