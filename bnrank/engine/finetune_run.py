"""A resumable full fine-tuning run with a cosine learning rate: what `--verify` and the cascade's race share.

The engine's training loop has no schedule of its own, so the run advances one step at a time and the cosine
steps between them. Being resumable, a race can train every racer to a round's end, cut some, and continue the
rest on the same run (same patches, optimiser and schedule), as successive halving in BN-only steps does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from bnrank.engine.bn_only import reinit_head
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.ranking import Candidate, build_candidate
from bnrank.engine.training.patches import TaskData
from bnrank.engine.training.trainer import ProgressFn, Trainer, TrainResult


class FineTuneRun:
    """Every parameter of a candidate trained from the run's fresh head (seeded like BN-only evaluation), the
    learning rate decaying from ``config.lr`` to 0 over ``config.max_steps`` when ``cosine``."""

    def __init__(
        self,
        candidate: Candidate,
        data: TaskData,
        config: TrainConfig,
        *,
        cosine: bool = True,
        score_at: Iterable[int] = (),
        on_progress: ProgressFn | None = None,
        label: str | None = None,
    ) -> None:
        score_at = list(score_at)
        model, arch, _ = build_candidate(candidate, data, config.seed)
        reinit_head(model, arch, config.seed)
        for p in model.parameters():
            p.requires_grad_(True)
        self.architecture = arch.name
        self.trainer = Trainer(
            model,
            model.parameters(),
            data,
            config,
            on_progress=on_progress,
            label=label or candidate.name,
            score_at=score_at,
            early_stop=not score_at,
        )
        total = config.max_steps
        self.decay = (
            torch.optim.lr_scheduler.LambdaLR(
                self.trainer.optimiser, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total))
            )
            if cosine
            else None
        )

    def run(self, until: int | None = None) -> FineTuneRun:
        """Train on to step ``until`` (default the whole budget), or less where patience stops the run."""
        trainer = self.trainer
        until = trainer.config.max_steps if until is None else min(until, trainer.config.max_steps)
        if self.decay is None:
            trainer.run(until)
            return self
        while trainer.step < until and not trainer.stopped_early:
            trainer.run(trainer.step + 1)
            self.decay.step()
        return self

    def result(self) -> TrainResult:
        return self.trainer.result()
