"""Ranking candidates by norm-only (BN-only) evaluation, with a random-init control and a stability report.

One candidate's failure (a bad file, a NaN loss) fails that entry with its reason; the others are still
ranked. The control row is a randomly initialised copy of each architecture: the thesis (§3.1.1) shows
pre-training does not always help, and the control tells the user whether any candidate beats random
features on their task. One pool may mix normalisation kinds (a BatchNorm Models Genesis checkpoint beside
an InstanceNorm nnU-Net): every architecture gets its own control, and each entry says which kinds were
trained and how many parameters that was (``norm_kinds``, ``trained_parameters``).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from scipy.stats import kendalltau

from bnrank.engine.architectures import Architecture
from bnrank.engine.bn_only import norm_only_evaluate, norm_only_setup
from bnrank.engine.configs.ranking import RankConfig
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.entries import RankEntry, RankingResult
from bnrank.engine.errors import BNRankError
from bnrank.engine.fitting import LoadReport, load_checkpoint
from bnrank.engine.gamma import gamma_stats
from bnrank.engine.halving import halving_steps, halving_summary, halving_survivors
from bnrank.engine.recognition import resolve_architecture
from bnrank.engine.ties import tie_guidance
from bnrank.engine.training.batched import can_train_together, train_together
from bnrank.engine.training.patches import TaskData
from bnrank.engine.training.trainer import ProgressFn, Trainer, TrainResult, recalibration_batches
from bnrank.engine.training.validation import Validator, point_value, windowed_score


@dataclass
class Candidate:
    """A checkpoint to rank, or (path None) the random-init control of an architecture."""

    name: str
    path: Path | None = None
    architecture: str | Architecture | None = None
    network_def: Mapping[str, Any] | None = None
    build_kwargs: dict[str, Any] = field(default_factory=dict)
    head: str | None = None
    """The convolution a converted graph's head starts at, as named by the user (None: found in the graph)."""

    @property
    def is_control(self) -> bool:
        return self.path is None


def build_candidate(
    candidate: Candidate, data: TaskData, seed: int
) -> tuple[torch.nn.Module, Architecture, LoadReport | None]:
    """Build and load a candidate; the build is seeded so anything not loaded starts identically for all."""
    torch.manual_seed(seed)
    if candidate.is_control:
        arch, _ = resolve_architecture({}, candidate.architecture, candidate.network_def)
        kwargs = {**candidate.build_kwargs, "in_channels": data.in_channels, "out_channels": data.n_classes}
        return arch.build(**kwargs), arch, None
    model, report = load_checkpoint(
        candidate.path,
        out_channels=data.n_classes,
        in_channels=data.in_channels,
        architecture=candidate.architecture,
        network_def=candidate.network_def,
        head=candidate.head,
    )
    arch, _ = resolve_architecture(
        {}, report.architecture if candidate.network_def is None else None, candidate.network_def
    )
    return model, arch, report


def evaluate_candidate(
    candidate: Candidate, data: TaskData, config: TrainConfig, *, on_progress: ProgressFn | None = None
) -> RankEntry:
    """Norm-only evaluation of one candidate. Input problems become a failed entry, never an exception."""
    entry = RankEntry(checkpoint=candidate.name, is_control=candidate.is_control)
    started = time.perf_counter()
    try:
        model, arch, report = build_candidate(candidate, data, config.seed)
        entry.architecture = arch.name
        entry.load_report = report.to_dict() if report else None
        result, raw, after_bn, trained = norm_only_evaluate(
            model, arch, data, config, on_progress=on_progress, label=candidate.name
        )
        entry.set_trained(trained)
    except BNRankError as exc:
        entry.status, entry.error = "failed", str(exc)
        entry.seconds = round(time.perf_counter() - started, 3)
        return entry
    fill_entry(entry, result)
    entry.seconds = round(time.perf_counter() - started, 3)
    entry.gamma = {"raw": raw, "after_bn": after_bn}
    return entry


def fill_entry(entry: RankEntry, result: TrainResult) -> None:
    entry.score = result.score
    entry.dice = result.dice
    entry.case_scores = result.case_scores
    entry.dice_per_class = result.dice_per_class
    entry.curve = result.curve
    entry.steps = result.steps


def order_entries(entries: Sequence[RankEntry]) -> list[RankEntry]:
    """Rank succeeded entries by score (best first); failed ones follow, unranked.

    Under successive halving a candidate that reached a later round ranks above every one stopped earlier.
    """
    ok = sorted((e for e in entries if e.status == "ok"), key=lambda e: (-(e.halving_round or 0), -(e.score or 0.0)))
    for i, e in enumerate(ok, start=1):
        e.rank = i
    return ok + [e for e in entries if e.status != "ok"]


def stability(entries: Sequence[RankEntry], window: int, fraction: float = 0.5) -> dict[str, Any]:
    """How far to trust the order: the order at part of the budget against the order at the end.

    Each candidate is re-scored on its curve up to ``fraction`` of its steps; Kendall τ between that
    order and the final one near 1 means more training would not have reshuffled the ranking.
    """
    ok = [e for e in entries if e.status == "ok" and e.curve]
    result: dict[str, Any] = {"at_fraction": fraction, "kendall_tau": None, "same_top1": None}
    if len(ok) < 2:
        return result
    if not all(any(point_value(p) is not None and p["step"] <= int(e.steps * fraction) for p in e.curve) for e in ok):
        result["reason"] = "no validation that early (validate_at 'scored' validates only where the score is taken)"
        return result
    partial = [windowed_score(e.curve, window, upto_step=int(e.steps * fraction)) for e in ok]
    final = [e.score or 0.0 for e in ok]
    tau = kendalltau(partial, final).statistic
    result["kendall_tau"] = None if tau is None or math.isnan(tau) else round(float(tau), 4)
    early = max(range(len(ok)), key=partial.__getitem__)
    result["same_top1"] = early == max(range(len(ok)), key=final.__getitem__)
    result["top1_at_fraction"] = ok[early].checkpoint
    return result


def reconcile(ties: dict[str, Any], stability: Mapping[str, Any], entries: Sequence[RankEntry]) -> dict[str, Any]:
    """One answer from the tie guidance and the stability line: a rank 1 that the bootstrap over validation cases
    calls apart, but that did not lead at part of the budget, is not apart. The leader at that point joins the top
    group (``tie_group`` 1, each in the other's ``tied_with``), so no output says "stands apart" beside "same top-1:
    no". The bootstrap's P(rank 1 is best) stays as measured; ``reconciled`` says why the group grew."""
    earlier = stability.get("top1_at_fraction")
    top = list(ties.get("top_group") or [])
    if stability.get("same_top1") is not False or not top or earlier is None or earlier in top:
        return ties
    by_name = {e.checkpoint: e for e in entries}
    if earlier not in by_name:
        return ties
    for name in top:
        by_name[name].tied_with = [*by_name[name].tied_with, earlier]
    late = by_name[earlier]
    late.tied_with = [*top, *(n for n in late.tied_with if n not in top)]
    groups = [list(g) for g in ties.get("groups") or []]
    groups = [[n for n in g if n != earlier] for g in groups]
    groups = [g for g in groups if g]
    groups[0] = [*top, earlier]
    late.tie_group = 1
    return {
        **ties,
        "top_group": [*top, earlier],
        "groups": groups,
        "reconciled": f"{earlier} led at {stability.get('at_fraction', 0.5):.0%} of the budget (stability: same "
        "top-1 no), so rank 1 is not called apart",
    }


def control_candidates(entries: Sequence[RankEntry], candidates: Sequence[Candidate]) -> list[Candidate]:
    """The random-init controls ``rank_candidates`` adds: one per architecture and build options seen.

    ``entries[i]`` is the (unordered) entry of ``candidates[i]``. The one grouping rule of controls: the
    service uses it too. A control is named after its architecture, and after its build options as well
    where one architecture appears in several configurations, so the controls can be told apart.
    """
    controls: dict[str, Candidate] = {}
    for entry, cand in zip(entries, candidates, strict=False):
        if entry.load_report is None or entry.is_control:
            continue
        kwargs = {
            k: v for k, v in entry.load_report["build_kwargs"].items() if k not in ("in_channels", "out_channels")
        }
        key = json.dumps([entry.architecture, kwargs, cand.network_def], sort_keys=True, default=str)
        arch = cand.architecture if cand.network_def is None else None
        controls.setdefault(
            key,
            Candidate(
                name=str(entry.architecture),
                architecture=arch or entry.architecture,
                network_def=cand.network_def,
                build_kwargs=kwargs,
            ),
        )
    found = list(controls.values())
    configurations = Counter(c.name for c in found)
    for c in found:
        detail = f" {json.dumps(c.build_kwargs, sort_keys=True)}" if configurations[c.name] > 1 else ""
        c.name = f"control: random init ({c.name}{detail})"
    return found


def evaluate_round(
    candidate: Candidate,
    data: TaskData,
    config: TrainConfig,
    rank: RankConfig,
    halving_round: int,
    *,
    on_progress: ProgressFn | None = None,
) -> RankEntry:
    """BN-only evaluation of one candidate up to the end of one successive-halving round (1-based).

    The run starts from step 0 and trains to the round's end with the same validation points (``score_at`` every
    round's end) and no early stop, so it is the prefix of the run :func:`rank_candidates` continues in memory
    (constant learning rate, seeded patch schedule): its score at the round's end is the one that run compares.
    A service runs each round as a separate task this way; re-training the earlier rounds is the price of not
    carrying optimiser and RNG state between processes. Input problems become a failed entry, never an exception.
    """
    ends = halving_steps(config.max_steps, rank.halving_rounds, rank.halving_eta)
    if not 1 <= halving_round <= len(ends):
        raise ValueError(f"halving round {halving_round} is not one of 1..{len(ends)}")
    entry = RankEntry(checkpoint=candidate.name, is_control=candidate.is_control)
    entry.halving_round = halving_round if len(ends) > 1 else None
    started = time.perf_counter()
    try:
        model, arch, report = build_candidate(candidate, data, config.seed)
        entry.architecture = arch.name
        entry.load_report = report.to_dict() if report else None
        params, raw, start, trained = norm_only_setup(model, arch, config.seed)
        entry.set_trained(trained)
        trainer = Trainer(
            model,
            params,
            data,
            config,
            on_progress=on_progress,
            label=candidate.name,
            score_at=ends,
            early_stop=len(ends) == 1,
        )
        trainer.run(ends[halving_round - 1])
    except BNRankError as exc:
        entry.status, entry.error = "failed", str(exc)
        entry.seconds = round(time.perf_counter() - started, 3)
        return entry
    fill_entry(entry, trainer.result())
    entry.gamma = {"raw": raw, "after_bn": gamma_stats(trainer.model, reference=start)}
    entry.seconds = round(time.perf_counter() - started, 3)
    return entry


@dataclass
class _Live:
    """A candidate under successive halving: its entry and, while it trains, its trainer (model, optimiser,
    schedule and RNG state kept in memory between rounds)."""

    entry: RankEntry
    trainer: Trainer | None = None
    raw: dict | None = None
    start: dict | None = None
    seconds: float = 0.0


def _fail(entry: RankEntry, exc: BNRankError) -> None:
    entry.status, entry.error = "failed", str(exc)


def _groups(lives: Sequence[_Live]) -> list[list[_Live]]:
    """Candidates that can share one stacked network (same architecture, layout and step), in first-seen order."""
    groups: list[list[_Live]] = []
    for lv in lives:
        for g in groups:
            if g[0].entry.architecture == lv.entry.architecture and can_train_together([g[0].trainer, lv.trainer]):
                g.append(lv)
                break
        else:
            groups.append([lv])
    return groups


def _rank_kept(
    candidates: Sequence[Candidate],
    data: TaskData,
    config: TrainConfig,
    rank: RankConfig,
    control: bool,
    on_progress: ProgressFn | None,
) -> tuple[list[RankEntry], dict[str, Any]]:
    """Successive halving (and batched training): every candidate trains to the first round's end, the better
    1/eta go on, and so on; with ``rank.batched`` the candidates of one architecture train in one stacked network.

    A candidate's run is continued, not restarted: its trainer keeps the model, the optimiser state, the patch
    schedule and the RNG state, so a survivor's last round is exactly the run it would have had alone, and every
    candidate of a round saw the same patches in the same order. The price is memory: every candidate's model stays
    loaded until the end.
    """
    ends = halving_steps(config.max_steps, rank.halving_rounds, rank.halving_eta)
    patience = len(ends) == 1  # halving compares candidates at fixed budgets: none may stop early
    validator, recal = Validator(data, config), recalibration_batches(data, config)
    progress = {"done": 0, "from": 0, "total": 1}

    def report(step: int, _total: int, msg: str) -> None:
        if on_progress:
            on_progress(min(progress["done"] + step - progress["from"], progress["total"]), progress["total"], msg)

    def start(cand: Candidate) -> _Live:
        live = _Live(RankEntry(checkpoint=cand.name, is_control=cand.is_control))
        t0 = time.perf_counter()
        try:
            model, arch, load = build_candidate(cand, data, config.seed)
            live.entry.architecture = arch.name
            live.entry.load_report = load.to_dict() if load else None
            params, live.raw, live.start, trained = norm_only_setup(model, arch, config.seed)
            live.entry.set_trained(trained)
            live.trainer = Trainer(
                model,
                params,
                data,
                config,
                on_progress=report,
                label=cand.name,
                score_at=ends,
                early_stop=patience,
                validator=validator,
                recalibration=recal,
            )
        except BNRankError as exc:
            _fail(live.entry, exc)
        live.seconds = time.perf_counter() - t0
        return live

    lives = [start(c) for c in candidates]
    if control:
        lives += [start(c) for c in control_candidates([lv.entry for lv in lives], candidates)]
    alive = [lv for lv in lives if lv.trainer is not None]
    counts = [math.ceil(len(alive) / rank.halving_eta**k) for k in range(len(ends))]
    progress["total"] = max(1, sum(n * (e - b) for n, e, b in zip(counts, ends, [0, *ends[:-1]], strict=True)))
    for k, end in enumerate(ends):
        for group in _groups(alive) if rank.batched else [[lv] for lv in alive]:
            trainers = [lv.trainer for lv in group if lv.trainer is not None]
            progress["from"] = trainers[0].step
            if len(trainers) > 1:
                for i, exc in train_together(trainers, end).items():
                    _fail(group[i].entry, exc)
            else:
                try:
                    trainers[0].run(end)
                except BNRankError as exc:
                    _fail(group[0].entry, exc)
            progress["done"] += sum(t.step for t in trainers) - progress["from"] * len(trainers)
            for lv in group:
                lv.entry.halving_round = k + 1 if len(ends) > 1 else None
        alive = [lv for lv in alive if lv.entry.status == "ok"]
        if k + 1 < len(ends):
            scores = [lv.trainer.score(end) for lv in alive]  # type: ignore[union-attr]
            alive = [alive[i] for i in halving_survivors(scores, rank.halving_eta)]
    for lv in lives:
        if lv.trainer is None or lv.entry.status != "ok":
            lv.entry.seconds = round(lv.seconds + (lv.trainer.seconds if lv.trainer else 0.0), 3)
            continue
        fill_entry(lv.entry, lv.trainer.result())
        lv.entry.gamma = {"raw": lv.raw, "after_bn": gamma_stats(lv.trainer.model, reference=lv.start)}
        lv.entry.seconds = round(lv.seconds + lv.trainer.seconds, 3)
    entries = [lv.entry for lv in lives]
    return entries, halving_summary(entries, ends, rank.halving_eta, config.max_steps, retrained=False)


def rank_candidates(
    candidates: Sequence[Candidate],
    data: TaskData,
    config: TrainConfig,
    *,
    dataset_name: str = "",
    control: bool = True,
    on_progress: ProgressFn | None = None,
    rank: RankConfig | None = None,
) -> RankingResult:
    """Evaluate every candidate (and the random-init controls) on the same data, schedule and head seed.

    ``rank`` (default :class:`RankConfig`) adds successive halving and sets the tie guidance.
    """
    rank = rank or RankConfig()
    halving = None
    if rank.halving_rounds > 1 or rank.batched:
        entries, halving = _rank_kept(candidates, data, config, rank, control, on_progress)
        halving = halving if rank.halving_rounds > 1 else None
    else:
        entries = []
        for i, cand in enumerate(candidates):

            def progress(step: int, total: int, msg: str, i: int = i) -> None:
                if on_progress:
                    on_progress(i * total + step, len(candidates) * total, msg)

            entries.append(evaluate_candidate(cand, data, config, on_progress=progress))
        for cand in control_candidates(entries, candidates) if control else []:
            entries.append(evaluate_candidate(cand, data, config))
    ordered, closed = close_ranking(entries, config, rank)
    return RankingResult(
        dataset=dataset_name,
        entries=ordered,
        config={**asdict(config), "rank": asdict(rank)},
        stability=closed["stability"],
        ties=closed["ties"],
        halving=halving,
    )


def close_ranking(
    entries: Sequence[RankEntry], config: TrainConfig, rank: RankConfig
) -> tuple[list[RankEntry], dict[str, Any]]:
    """Order evaluated entries and say how far to trust the order: ``(ordered, {"stability", "ties"})``.

    The one close-out of a ranking: `rank_candidates` and the service's (service/core/jobflow.py) both call it,
    so the same entries give the same order, stability and tie groups (drawn with the ranking's seed) either way.
    """
    ordered = order_entries(entries)
    window = config.score_window
    stable = stability(ordered, window)
    ties = tie_guidance(ordered, rank.tie_resamples, rank.tie_confidence, window, config.seed)
    return ordered, {"stability": stable, "ties": reconcile(ties, stable, ordered)}
