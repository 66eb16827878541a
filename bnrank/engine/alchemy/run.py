"""One alchemy run on a network in memory: identify → modify → maximize, as in thesis §3.2.2.

``mode`` picks the starting point (checkpoint.py builds it): ``scratch`` (the architecture, seeded random
init), ``finetune`` (the checkpoint) or ``alchemy`` (the checkpoint, then identification → modification).
Each step has its switch in :class:`AlchemyConfig`; fine-tuning always ends the run, on L + λ·R_γ where
maximization is on and on L alone otherwise, so R_γ combines with any mode (thesis Table 4.2). Every step
reports progress on one running count through one ProgressFn, and a diverging step fails with the step it
failed at, before anything is written.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from bnrank.engine.alchemy.identification import Identification, Selection, identify, mark_redundant
from bnrank.engine.alchemy.maximization import FINE_TUNING, MAXIMIZATION, Tuning, fine_tune, maximize
from bnrank.engine.alchemy.modification import modify, skipped_warnings
from bnrank.engine.alchemy.pairs import find_conv_bn_pairs
from bnrank.engine.architectures import Architecture
from bnrank.engine.bn_only import reinit_head
from bnrank.engine.configs.alchemy import AlchemyConfig, AlchemyError
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.gamma import gamma_stats
from bnrank.engine.norms import ALL_NAMES, InsertedAffine, has_norm, without_affine
from bnrank.engine.training.patches import TaskData
from bnrank.engine.training.trainer import ProgressFn


@dataclass
class AlchemyResult:
    """Everything one run measured; ``gamma`` holds γ statistics per phase (raw, after each step)."""

    mode: str
    options: dict[str, Any]
    config: dict[str, Any]
    score: float
    dice_per_class: dict[str, float | None]
    curve: list[dict[str, float]]
    steps: int
    seconds: float
    identification: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None
    modification: dict[str, Any] | None = None
    gamma: dict[str, Any] = field(default_factory=dict)
    r_gamma: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    architecture: str | None = None
    build_kwargs: dict[str, Any] | None = None
    checkpoint: str | None = None
    dataset: str | None = None
    weights: str | None = None
    n_train: int = 0
    n_val: int = 0
    val_cases: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls, options: AlchemyConfig, config: TrainConfig, data: TaskData, tuned: Tuning, **steps: Any
    ) -> AlchemyResult:
        """The result of a run that ended with ``tuned``; ``steps`` holds what the earlier steps recorded."""
        recorded = asdict(options)  # the switches and the rule as they took effect
        recorded.update(
            maximization=options.maximizes, threshold=options.gamma_threshold if options.fraction is None else None
        )
        run = tuned.training
        return cls(
            mode=options.mode,
            options=recorded,
            config=asdict(config),
            score=run.score,
            dice_per_class=run.dice_per_class,
            curve=run.curve,
            steps=run.steps,
            r_gamma=tuned.r_gamma,
            n_train=len(data.train),
            n_val=len(data.val),
            val_cases=[v.case_id for v in data.val],
            **steps,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Phases:
    """Maps each phase's (step, total) onto one running count over the whole job (all folds of a k-fold)."""

    def __init__(self, on_progress: ProgressFn | None, total: int, offset: int = 0, prefix: str = "") -> None:
        self.on_progress, self.total, self.offset, self.prefix = on_progress, total, offset, prefix

    def phase(self, name: str, steps: int) -> ProgressFn | None:
        if self.on_progress is None:
            self.offset += steps
            return None
        start = self.offset
        self.offset += steps
        callback = self.on_progress

        def show(step: int, _total: int, message: str) -> None:
            message = message.strip()
            at = message.find("step ")  # drop train()'s label: the phase name says it
            callback(start + step, self.total, f"{self.prefix}[{name}] {message[max(at, 0) :]}")

        return show

    def note(self, message: str) -> None:
        if self.on_progress:
            self.on_progress(self.offset, self.total, f"{self.prefix}{message}")


def planned_steps(config: TrainConfig, options: AlchemyConfig) -> int:
    """Training steps one run takes at most: identification's BN-only steps, then fine-tuning's."""
    ident = options.identify_steps if options.identifies else 0
    return ident + config.max_steps


def require_norms(model: nn.Module, what: str) -> None:
    """Refuse a network with no normalisation layer at all: it has no γ to read, train or clip."""
    if not has_norm(model):
        raise AlchemyError(
            f"{what} needs normalisation layers ({ALL_NAMES}; their γ mark redundant kernels), but this network "
            "has none; pick a network with normalisation (e.g. a MONAI network_def with norm 'batch' or 'instance')"
        )


require_batchnorm = require_norms
"""The old name of :func:`require_norms` (from when only BatchNorm γ counted)."""


def gamma_steps(options: AlchemyConfig) -> list[str]:
    """The switched-on steps that read or move γ (every step but plain fine-tuning)."""
    steps = (
        ("identification", options.identifies),
        ("modification", options.modifies),
        ("maximization (R_γ)", options.maximizes),
    )
    return [what for what, on in steps if on]


def no_own_affine_message(what: str, detail: str) -> str:
    """Alchemy's refusal of normalisations without their own affine (the engine's and the service's)."""
    return (
        f"{what} works on the network's own γ, but {detail}; alchemy inserts no affine, since the weights it "
        "writes must load into the same architecture. Norm-only ranking and the γ probe do work on this network "
        "(with identity affines inserted for the evaluation), and so does plain fine-tuning (mode finetune or "
        "scratch without maximization)"
    )


def require_own_affines(model: nn.Module, what: str) -> None:
    """Refuse γ steps on a network whose normalisations lack their own affine.

    Norm-only ranking inserts identity affines after such layers for the evaluation; alchemy does not: the
    weights it writes must load into the same architecture, and an inserted affine trained away from the
    identity cannot be folded back into a normalisation that has none. So alchemy works on the network's own
    γ only, and refuses (naming the layers) where there are none to work on.
    """
    require_norms(model, what)
    missing = without_affine(model) + [
        (name, f"{m.kind}, inserted") for name, m in model.named_modules() if isinstance(m, InsertedAffine)
    ]
    if missing:
        kinds = sorted({kind for _, kind in missing})
        shown = ", ".join(name for name, _ in missing[:3]) + (" ..." if len(missing) > 3 else "")
        detail = f"{len(missing)} of its normalisation layers ({', '.join(kinds)}) have no affine of their own"
        detail += f" ({shown})"
        raise AlchemyError(no_own_affine_message(what, detail))


def _check_norms(model: nn.Module, options: AlchemyConfig) -> None:
    """Every step but plain fine-tuning reads or moves γ: refuse a network without its own γ before any work."""
    needs_gamma = gamma_steps(options)
    if needs_gamma:
        require_own_affines(model, " and ".join(needs_gamma))


def run_alchemy(
    model: nn.Module,
    arch: Architecture,
    data: TaskData,
    config: TrainConfig,
    options: AlchemyConfig | None = None,
    *,
    on_progress: ProgressFn | None = None,
    _phases: Phases | None = None,
) -> AlchemyResult:
    """Run the switched-on steps on ``model`` (already built or loaded for ``data``); trains it in place.

    The head is re-initialised from ``config.seed`` first (as in BN-only evaluation), so every mode and
    every checkpoint starts from the same head. ``config`` is the fine-tuning budget; identification's
    comes from ``options.identify_config(config)``.
    """
    options = options or AlchemyConfig()
    started = time.perf_counter()
    _check_norms(model, options)
    phases = _phases or Phases(on_progress, planned_steps(config, options))
    thr = options.gamma_threshold
    gamma: dict[str, Any] = {"raw": gamma_stats(model, thr)}
    warnings: list[str] = []
    reinit_head(model, arch, config.seed)

    found: Identification | None = None
    if options.identifies:
        found = identify(
            model, arch, data, config, options, on_progress=phases.phase("identification", options.identify_steps)
        )
        gamma["after_identification"] = found.gamma

    selection: Selection | None = None
    modification: dict[str, Any] | None = None
    if options.modifies:  # without identification, the checkpoint's own γ mark the kernels
        selection, marks_warnings = (found.selection, found.warnings) if found else mark_redundant(model, options)
        pairs, skipped = find_conv_bn_pairs(model, (1, data.in_channels, *config.patch_size))
        modification = modify(model, selection, pairs, skipped, config.seed)
        warnings += marks_warnings + skipped_warnings(modification)
        gamma["after_modification"] = gamma_stats(model, thr)
        phases.note(f"[modification] re-initialised {modification['reinitialised']} of {selection.total} kernels")

    name = MAXIMIZATION if options.maximizes else FINE_TUNING
    tune = maximize if options.maximizes else fine_tune
    tuned = tune(model, data, config, options, on_progress=phases.phase(name, config.max_steps))
    gamma["after_alchemy" if options.mode == "alchemy" else "after_training"] = gamma_stats(model, thr)

    return AlchemyResult.of(
        options,
        config,
        data,
        tuned,
        seconds=round(time.perf_counter() - started, 3),
        identification=asdict(found.training) if found else None,
        selection=selection.to_dict() if selection else None,
        modification=modification,
        gamma=gamma,
        warnings=warnings,
    )
