"""The cascade strategy: norm-only evaluation against seeded controls, then a short fine-tuning race with a stop rule.

Frozen features cannot see what fine-tuning makes of an architecture (issue 18's baselines: a random u8 scores below
a supervised u4 by BN-only evaluation and above it fine-tuned), and a single control seed hides how much of a gap is
the seed. So the cascade:

1. runs the thesis's norm-only evaluation of every candidate unchanged, and of each architecture's random-init
   control at ``control_seeds`` seeds; a candidate's score is its **gain** over its architecture's controls, and a
   gain within ``noise_floor_sd`` control s.d. is flagged as inside the noise floor;
2. races the ``race_leaders`` best of every architecture by gain with short full fine-tuning (cosine over
   ``race_steps``, each racer at ``race_seeds`` seeds), successive halving over the race's rounds (half kept, at
   least two), so architectures are compared by what fine-tuning does to them;
3. stops once the leader is separated (P(best) >= ``separation`` over a bootstrap of cases and seeds, and the same
   leader as the round before) or before a round that would pass the budget cap; then names the tied group and the
   evidence. Tie guidance and stability are read off the same rounds, so they cannot disagree.

The pieces below are pure functions of finished entries, so `bnrank rank` (:func:`rank_cascade`, runs continued in
memory) and the service (service/core/kinds/ranking.py, one task per entry and round, re-trained from step 0) reach
the same answer from the same scores.

**Cost is measured in seconds, not steps.** A norm-only step, a full fine-tuning step and a whole-volume validation
cost very different amounts, and differently per architecture and volume size, so a cap counted in steps misjudges
the share of fine-tuning actually spent. What the ranking spent is the measured seconds of every unit of work (each
entry's own clock: building and loading the candidate, training, validation). What fine-tuning every candidate would
cost is calibrated in the run: the first control of every architecture also times a few full fine-tuning steps and
one validation on the task (:func:`calibrate`), and the reference is ``reference_steps`` of those steps per
candidate. Before each race round the cap is held against the round's predicted seconds (the calibration, then each
racer's own measured seconds per step of the round before).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from bnrank.engine.configs.ranking import RankConfig
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.entries import RankEntry, RankingResult
from bnrank.engine.errors import BNRankError
from bnrank.engine.finetune_run import FineTuneRun
from bnrank.engine.halving import halving_steps
from bnrank.engine.ranking import Candidate, control_candidates, evaluate_candidate
from bnrank.engine.separation import p_best, resampled_means, tied_with
from bnrank.engine.small_structures import small_structure_rule, smallest_foreground_share
from bnrank.engine.training.patches import TaskData
from bnrank.engine.training.trainer import ProgressFn

SEPARATED = "leader separated"
BUDGET_CAP = "budget cap reached"
RACE_DONE = "race finished without separating the leader"
NO_RACE = "fewer than two candidates to race"
NO_COST = "no measured step cost to hold the budget cap against"
CALIBRATION_STEPS = 3
"""Full fine-tuning steps timed per architecture, after one untimed step (which pays one-off allocations)."""


def control_key(candidate: Candidate) -> str:
    """What ties a candidate to its architecture's controls: architecture, build options and network description."""
    return json.dumps(
        [candidate.architecture, candidate.build_kwargs, candidate.network_def], sort_keys=True, default=str
    )


def control_groups(
    entries: Sequence[RankEntry], candidates: Sequence[Candidate]
) -> tuple[list[Candidate], list[str | None]]:
    """The controls the engine's rule adds, and the name of each candidate's control (None: none, e.g. it failed)."""
    controls = control_candidates(entries, candidates)
    names = {control_key(c): c.name for c in controls}
    member: list[str | None] = []
    for e, c in zip(entries, candidates, strict=True):
        own = control_candidates([e], [c])
        member.append(names.get(control_key(own[0])) if own else None)
    return controls, member


def control_seeds(config: TrainConfig, rank: RankConfig) -> list[int]:
    """The seeds a control runs at: the ranking's own, then the next ones."""
    return [config.seed + k for k in range(rank.control_seeds)]


def race_seeds(config: TrainConfig, rank: RankConfig) -> list[int]:
    return [config.seed + k for k in range(rank.race_seeds)]


def stage_config(config: TrainConfig, data: TaskData) -> tuple[TrainConfig, dict[str, Any]]:
    """The norm-only stage's budget for this task: the small-structure rule applied (small_structures.py)."""
    return small_structure_rule(config, smallest_foreground_share(data))


def race_config(config: TrainConfig, rank: RankConfig, seed: int) -> TrainConfig:
    """The race's fine-tuning budget: all parameters, cosine to 0 over ``race_steps``, validation only where scored,
    no early stop (as `--verify`'s), at one of the race's seeds."""
    return replace(
        config,
        max_steps=rank.race_steps,
        lr=rank.race_lr,
        patience=10**6,
        val_every=min(config.val_every, rank.race_steps),
        weight_decay=0.0,
        validate_at="scored",
        score_window=1,
        seed=seed,
    )


def race_ends(rank: RankConfig) -> list[int]:
    return halving_steps(rank.race_steps, rank.race_rounds, 2)


def calibrate(candidate: Candidate, data: TaskData, config: TrainConfig, rank: RankConfig) -> dict[str, float] | None:
    """Seconds of one full fine-tuning step and of one validation of ``candidate`` on this task, measured here: the
    race's own run (all parameters, its budget and patches), one untimed step, then :data:`CALIBRATION_STEPS` timed
    ones and one validation. ``seconds`` is the whole calibration's cost (building included); None if it failed."""
    started = time.perf_counter()
    try:
        run = FineTuneRun(candidate, data, race_config(config, rank, config.seed), score_at=race_ends(rank))
        run.run(1)
        t0 = time.perf_counter()
        run.run(1 + CALIBRATION_STEPS)
        timed = run.trainer.step - 1
        step = (time.perf_counter() - t0) / timed if timed > 0 else time.perf_counter() - started
        t1 = time.perf_counter()
        run.trainer.validate()
        validation = time.perf_counter() - t1
    except BNRankError:
        return None
    return {
        "step_seconds": round(step, 5),
        "validation_seconds": round(validation, 5),
        "steps": run.trainer.step,
        "seconds": round(time.perf_counter() - started, 3),
    }


def evaluate_control(control: Candidate, data: TaskData, budget: TrainConfig, rank: RankConfig, seed: int) -> RankEntry:
    """A control's norm-only evaluation at ``seed``; the first control seed also calibrates its architecture's step
    cost (:func:`calibrate`), whose seconds count in the row's own."""
    entry = evaluate_candidate(control, data, replace(budget, seed=seed))
    entry.checkpoint = f"{control.name} seed {seed}"
    if seed == control_seeds(budget, rank)[0] and entry.status == "ok":
        entry.calibration = calibrate(control, data, budget, rank)
        if entry.calibration is not None:
            entry.seconds = round(entry.seconds + entry.calibration["seconds"], 3)
    return entry


@dataclass
class Costs:
    """What holds the budget cap: each control group's measured seconds per full fine-tuning step and validation,
    and the reference (fine-tuning every candidate for ``reference_steps``) they give, in seconds."""

    step: dict[str, float]
    validation: dict[str, float]
    reference: float | None
    cap: float | None


def costs(
    stage: StageOne, controls: Mapping[str, Sequence[RankEntry]], rank: RankConfig, prepare: float = 0.0
) -> Costs:
    """The cap in seconds from the controls' calibrations; a group whose calibration is missing is costed at the
    dearest measured one (never cheaper than what was seen), and with none at all there is no cap to hold.
    ``prepare`` (loading and preprocessing the dataset, measured) counts once in the reference too: fine-tuning
    every candidate would have had to read the data as well."""
    step: dict[str, float] = {}
    validation: dict[str, float] = {}
    for name, runs in controls.items():
        found = next((e.calibration for e in runs if e.calibration), None)
        if found:
            step[name], validation[name] = found["step_seconds"], found["validation_seconds"]
    if not step:
        return Costs({}, {}, None, None)
    dearest, dearest_val = max(step.values()), max(validation.values())
    for row in stage.rows:
        group = row.get("control") or ""
        step.setdefault(group, dearest)
        validation.setdefault(group, dearest_val)
    reference = prepare + sum(rank.reference_steps * step[row.get("control") or ""] for row in stage.rows)
    return Costs(step, validation, reference, rank.budget_cap * reference)


def _cases(entry: RankEntry) -> list[float]:
    """The per-case scores of an entry's last validation (its score alone where it kept none)."""
    row = list(entry.case_scores[-1]) if entry.case_scores else [entry.score]
    return [np.nan if v is None else float(v) for v in row]


@dataclass
class StageOne:
    """Norm-only gains over the controls: one row per candidate, each control group's noise floor, the racers."""

    rows: list[dict[str, Any]]
    floors: dict[str, dict[str, Any]]
    leaders: list[int]


def stage_one(
    entries: Sequence[RankEntry],
    member: Sequence[str | None],
    controls: Mapping[str, Sequence[RankEntry]],
    rank: RankConfig,
) -> StageOne:
    """Gains of ``entries`` (candidates, in order) over the controls of their group (``member[i]``), flagged
    where inside the noise floor, and the ``race_leaders`` best of every group by gain."""
    floors: dict[str, dict[str, Any]] = {}
    for name, runs in controls.items():
        scores = [e.score for e in runs if e.status == "ok" and e.score is not None]
        sd = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
        floors[name] = {
            "control": name,
            "seeds": [e.checkpoint for e in runs],
            "scores": [round(s, 4) for s in scores],
            "mean": round(float(np.mean(scores)), 4) if scores else None,
            "sd": round(sd, 4),
            "floor": round(rank.noise_floor_sd * sd, 4),
        }
    rows: list[dict[str, Any]] = []
    for e, group in zip(entries, member, strict=True):
        f = floors.get(group or "")
        gain = e.score - f["mean"] if e.status == "ok" and e.score is not None and f and f["mean"] is not None else None
        rows.append(
            {
                "name": e.checkpoint,
                "architecture": e.architecture,
                "control": group,
                "norm_only_score": e.score,
                "gain": None if gain is None else round(gain, 4),
                "inside_noise_floor": None if gain is None else abs(gain) <= f["floor"],  # type: ignore[index]
                "status": e.status,
                "error": e.error,
            }
        )
    by_gain = sorted((i for i, r in enumerate(rows) if r["gain"] is not None), key=lambda i: -rows[i]["gain"])
    leaders = [i for name in floors for i in [j for j in by_gain if rows[j]["control"] == name][: rank.race_leaders]]
    leaders.sort(key=by_gain.index)
    for i in leaders:
        rows[i]["races"] = True
    return StageOne(rows, floors, leaders)


@dataclass
class Race:
    """The race so far: each round's record, who is still in, the last round's bootstrap, and the stop reason."""

    alive: list[int]
    costs: Costs
    rounds: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, Any] | None = None
    stop: str | None = None
    spent: float = 0.0
    """Measured seconds of every unit of work so far, the race's counted as continued runs."""
    steps: int = 0
    """Training steps so far (norm-only and fine-tuning alike), reported beside the seconds."""
    retraining: float = 0.0
    """Seconds spent re-training earlier rounds' steps (the service's tasks start from step 0), beyond ``spent``."""
    per_step: dict[int, float] = field(default_factory=dict)
    """Each racer's measured seconds per fine-tuning step (validation included) in its last round, per seed."""
    failed: dict[int, int] = field(default_factory=dict)
    """Racers whose run failed: their row index and the (1-based) round they failed in."""


def start_race(stage: StageOne, spent: float, steps: int, costs: Costs) -> Race:
    race = Race(alive=list(stage.leaders), costs=costs, spent=spent, steps=steps)
    if len(race.alive) < 2:
        race.stop = NO_RACE
    return race


def round_steps(race: Race, rank: RankConfig, k: int, *, retrained: bool = False) -> int:
    """Training steps round ``k`` (0-based) costs: from step 0 when every round re-trains, else from the last end."""
    ends = race_ends(rank)
    start = 0 if retrained or k == 0 else ends[k - 1]
    return len(race.alive) * rank.race_seeds * (ends[k] - start)


def predicted_seconds(race: Race, stage: StageOne, rank: RankConfig, k: int) -> float:
    """Seconds round ``k`` will cost as a continued run: each racer's measured seconds per step of the round
    before (validation included), else its architecture's calibrated step plus one validation, per seed."""
    ends = race_ends(rank)
    new = ends[k] - (ends[k - 1] if k else 0)
    total = 0.0
    for i in race.alive:
        group = stage.rows[i].get("control") or ""
        if i in race.per_step:
            total += rank.race_seeds * new * race.per_step[i]
        else:
            total += rank.race_seeds * (new * race.costs.step[group] + race.costs.validation[group])
    return total


def may_run(race: Race, stage: StageOne, rank: RankConfig, k: int) -> bool:
    """Whether round ``k`` runs; if the cap forbids it, the race stops here and says so. The cap is held against the
    strategy's own cost (continued runs, in measured seconds), so `bnrank rank` and the service, which re-trains each
    round, judge alike; the service's extra re-training is reported beside it (``Race.retraining``)."""
    if race.stop is not None or k >= len(race_ends(rank)):
        return False
    if race.costs.cap is None:
        race.stop = NO_COST
        race.rounds.append({"round": k + 1, "steps": race_ends(rank)[k], "skipped": NO_COST})
        return False
    cost = predicted_seconds(race, stage, rank, k)
    if race.spent + cost > race.costs.cap:
        race.stop = BUDGET_CAP
        race.rounds.append(
            {
                "round": k + 1,
                "steps": race_ends(rank)[k],
                "skipped": f"about {cost:.1f} s more (spent {race.spent:.1f} s) would pass the cap of "
                f"{race.costs.cap:.1f} s",
            }
        )
        return False
    return True


def close_round(
    race: Race,
    stage: StageOne,
    rank: RankConfig,
    k: int,
    runs: Mapping[int, Sequence[RankEntry]],
    seed: int,
    *,
    retrained: bool,
) -> None:
    """Score round ``k`` from each racer's seeded runs at its end (``runs[i]``), apply the stop rule, cut the rest.

    The bootstrap draws the validation cases (paired) and each racer's seeds, seeded by the ranking's seed and the
    round, so the engine and the service draw alike.
    """
    ends = race_ends(rank)
    end, start = ends[k], (ends[k - 1] if k else 0)
    race.steps += round_steps(race, rank, k)
    for i in race.alive:  # measured seconds; a re-trained row's share beyond this round's own steps is re-training
        measured = sum(e.seconds for e in runs[i])
        own = measured * (end - start) / end if retrained else measured
        race.spent += own
        race.retraining += measured - own
        race.per_step[i] = own / max(1, len(runs[i]) * (end - start))
    for i in list(race.alive):
        failed = [e for e in runs[i] if e.status != "ok"]
        if failed:
            why = f"failed in the race: {failed[0].error}"
            stage.rows[i].update(cut_in_round=k + 1, why=why)
            race.failed[i] = k + 1
            race.alive.remove(i)
    if not race.alive:
        race.stop = NO_RACE
        return
    mats = [np.array([_cases(e) for e in runs[i]]) for i in race.alive]
    rng = np.random.default_rng([seed, k])
    stats = resampled_means(mats, rank.tie_resamples or 1000, rng) if len(mats) > 1 else np.ones((1, 1))
    p = p_best(stats)
    means = [float(np.nanmean(m)) for m in mats]
    order = sorted(range(len(race.alive)), key=lambda j: -means[j])
    record: dict[str, Any] = {
        "round": k + 1,
        "steps": end,
        "racers": [
            {
                "name": stage.rows[race.alive[j]]["name"],
                "score": round(means[j], 4),
                "seed_scores": [round(float(np.nanmean(row)), 4) for row in mats[j]],
                "p_best": round(float(p[j]), 4),
            }
            for j in order
        ],
        "cut": [],
        "spent_seconds": round(race.spent, 3),
        "spent_steps": race.steps,
    }
    race.rounds.append(record)
    race.alive = [race.alive[j] for j in order]
    race.last = {"stats": stats[:, order], "p": p[order]}
    for place, j in enumerate(order, start=1):  # the place, not the rounded score, orders the answer (rank_order)
        stage.rows[race.alive[place - 1]].update(race_score=round(means[j], 4), race_round=k + 1, race_place=place)
    if len(race.alive) < 2:
        race.stop = NO_RACE
        return
    if p[order[0]] >= rank.separation and _same_leader(race.rounds):
        race.stop = SEPARATED
        return
    if k + 1 >= len(race_ends(rank)):
        race.stop = RACE_DONE
        return
    keep = max(2, math.ceil(len(race.alive) / 2))
    for i in race.alive[keep:]:
        row = stage.rows[i]
        why = (
            f"round {k + 1}: validation score {row['race_score']:.4f} after {end} fine-tuning steps, below the "
            f"{keep} kept (P(best) {next(x['p_best'] for x in record['racers'] if x['name'] == row['name']):.2f})"
        )
        row.update(cut_in_round=k + 1, why=why)
        record["cut"].append({"name": row["name"], "why": why})
    race.alive = race.alive[:keep]


def _same_leader(rounds: Sequence[dict[str, Any]]) -> bool:
    """The leader of the last round led the round before too (or there was no round before)."""
    ran = [r for r in rounds if "racers" in r]
    return len(ran) < 2 or ran[-1]["racers"][0]["name"] == ran[-2]["racers"][0]["name"]


def verdict(
    stage: StageOne,
    race: Race,
    rank: RankConfig,
    entries: Sequence[RankEntry],
    member: Sequence[str | None],
    controls: Mapping[str, Sequence[RankEntry]],
    seed: int,
) -> dict[str, Any]:
    """The answer: the leader, P(best), the tied group, whether the leader is separated, and why: one reading of
    the same rounds for both tie guidance and stability."""
    rows = stage.rows
    ran = [r for r in race.rounds if "racers" in r]
    stop = race.stop or RACE_DONE
    if race.last is not None and len(ran[-1]["racers"]) >= 2:
        stats, p = race.last["stats"], race.last["p"]
        names = [x["name"] for x in ran[-1]["racers"]]
        group = [names[0], *(names[j] for j in tied_with(stats, 0, rank.separation))]
        same = _same_leader(race.rounds) if len(ran) > 1 else None
        tau = None
        if len(ran) > 1:
            before = {x["name"]: x["score"] for x in ran[-2]["racers"]}
            shared = [n for n in names if n in before]
            if len(shared) > 1:
                t = kendalltau(
                    [before[n] for n in shared], [x["score"] for x in ran[-1]["racers"] if x["name"] in before]
                )
                tau = None if t.statistic is None or math.isnan(t.statistic) else round(float(t.statistic), 4)
        if same is False:  # the leader changed between rounds: no claim of separation, both leaders stay in the group
            previous = ran[-2]["racers"][0]["name"]
            group += [previous] if previous not in group else []
        separated = bool(p[0] >= rank.separation and same is not False and len(group) == 1)
        evidence = f"race round {ran[-1]['round']} at {ran[-1]['steps']} fine-tuning steps x {rank.race_seeds} seed(s)"
        return _answer(names[0], float(p[0]), separated, group, same, tau, stop, evidence)
    if race.last is not None and ran:  # one racer left: the others failed in its round, and failing is the evidence
        last = ran[-1]
        survivor = last["racers"][0]["name"]
        failed = [rows[i]["name"] for i, k in sorted(race.failed.items()) if k == last["round"]]
        evidence = (
            f"race round {last['round']} at {last['steps']} fine-tuning steps: the only racer that fine-tuned; "
            f"{', '.join(failed)} failed"
        )
        return _answer(survivor, None, False, [survivor], None, None, stop, evidence)
    ok = [i for i, r in enumerate(rows) if r["gain"] is not None]
    if not ok:
        return _answer(None, None, False, [], None, None, stop, "no candidate could be evaluated")
    # No race decided it: read the answer off the gains, with seed and control noise in the bootstrap.
    groups = sorted({member[i] for i in ok})  # type: ignore[type-var]
    mats = [np.array([_cases(entries[i])]) for i in ok]
    ctl = [np.array([_cases(e) for e in controls[g] if e.status == "ok"]) for g in groups]  # type: ignore[index]
    extra = [stage.floors[member[i]]["sd"] for i in ok] + [0.0] * len(groups)  # type: ignore[index]
    stats = resampled_means([*mats, *ctl], rank.tie_resamples or 1000, np.random.default_rng([seed, 999]), extra)
    order = sorted(range(len(ok)), key=lambda j: -rows[ok[j]]["gain"])
    gains = np.stack([stats[:, j] - stats[:, len(ok) + groups.index(member[ok[j]])] for j in order], 1)
    p = p_best(gains)
    names = [rows[ok[j]]["name"] for j in order]
    group = [names[0], *(names[j] for j in tied_with(gains, 0, rank.separation))]
    separated = bool(p[0] >= rank.separation and len(group) == 1)
    evidence = f"norm-only gains over {rank.control_seeds} control seeds per architecture"
    return _answer(names[0], float(p[0]), separated, group, None, None, stop, evidence)


def _answer(
    leader: str | None, p: float | None, separated: bool, group: list[str], same: bool | None, tau: float | None,
    stop: str, evidence: str,
) -> dict[str, Any]:  # fmt: skip
    if leader is None:
        guidance = "no candidate could be evaluated"
    elif p is None:  # no score set it against another: it leads because the rest failed, which is not separation
        guidance = (
            f"{stop}: {leader} is the only racer that fine-tuned without failing; no score compares it with another, "
            "so read the failures (each row's why) before fine-tuning it alone"
        )
    elif separated:
        guidance = f"{leader} stands apart: best in {p:.0%} of resamples over cases and seeds ({stop})"
    else:
        guidance = (
            f"{stop}: {len(group)} candidate(s) cannot be told apart ({', '.join(group)}); P({leader} is best) = "
            f"{p:.2f}. Fine-tune these {len(group)} to decide, not every candidate"
        )
    return {
        "leader": leader,
        "p_best": None if p is None else round(p, 4),
        "separated": separated,
        "tied_group": group,
        "same_top1": same,
        "kendall_tau": tau,
        "stop": stop,
        "evidence": evidence,
        "guidance": guidance,
    }


def rank_order(stage: StageOne) -> list[int]:
    """Candidates in answer order: racers first (later round, then their place in it), then the rest by gain.

    The place is the round's own order by unrounded mean, the one the verdict names its leader from: two racers
    whose scores round alike (or are both 0) must not swap behind the verdict's back."""
    ok = [i for i, r in enumerate(stage.rows) if r["gain"] is not None]
    rows = stage.rows
    return sorted(
        ok, key=lambda i: (-(rows[i].get("race_round") or 0), rows[i].get("race_place") or 0, -rows[i]["gain"])
    )


def summary(
    stage: StageOne, race: Race, answer: dict[str, Any], rank: RankConfig, n_candidates: int, small: dict[str, Any],
    stage_budget: TrainConfig,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:  # fmt: skip
    """``(cascade, stability, ties)`` of a finished cascade, the last two read off its verdict."""
    stability = {
        "method": "the leader and order of the last race round against the round before",
        "kendall_tau": answer["kendall_tau"],
        "same_top1": answer["same_top1"],
    }
    ties = {
        "method": "bootstrap over validation cases and seeds (engine/separation.py)",
        "resamples": rank.tie_resamples or 1000,
        "confidence": rank.separation,
        "p_top_is_best": answer["p_best"],
        "top_group": answer["tied_group"],
        "groups": [answer["tied_group"]] if answer["tied_group"] else [],
    }
    cascade = {
        "strategy": "cascade",
        "small_structures": small,
        "stages": [
            {
                "stage": "norm_only",
                "config": {"max_steps": stage_budget.max_steps, "lr": stage_budget.lr, "score": stage_budget.score},
                "noise_floor": list(stage.floors.values()),
                "rows": stage.rows,
            },
            {
                "stage": "race",
                "config": {
                    "max_steps": rank.race_steps,
                    "lr": rank.race_lr,
                    "seeds": rank.race_seeds,
                    "ends": race_ends(rank),
                },
                "leaders": [stage.rows[i]["name"] for i in stage.leaders],
                "rounds": race.rounds,
            },
        ],
        "stop": answer["stop"],
        "verdict": answer,
        "cost": {
            "spent_seconds": round(race.spent, 3),
            "reference_seconds": None if race.costs.reference is None else round(race.costs.reference, 3),
            "cap_seconds": None if race.costs.cap is None else round(race.costs.cap, 3),
            "share_of_finetuning_all": round(race.spent / race.costs.reference, 4) if race.costs.reference else None,
            "budget_cap": rank.budget_cap,
            "reference_steps": rank.reference_steps,
            "step_seconds": {
                g: {"fine_tuning_step": round(race.costs.step[g], 5), "validation": round(race.costs.validation[g], 5)}
                for g in sorted(race.costs.step)
            },
            "retraining_seconds": round(race.retraining, 3),
            "spent_steps": race.steps,
            "n_candidates": n_candidates,
        },
    }
    return cascade, stability, ties


def apply_answer(entries: Sequence[RankEntry], stage: StageOne, answer: dict[str, Any]) -> list[RankEntry]:
    """Ranks and tie fields on the candidates' entries, in answer order; unranked ones (failed) after."""
    order = rank_order(stage)
    for e in entries:
        e.rank, e.tie_group, e.tied_with, e.p_best = None, None, [], None
    for n, i in enumerate(order, start=1):
        entries[i].rank = n
    group = answer["tied_group"]
    for e in entries:
        if e.checkpoint in group:
            e.tie_group, e.tied_with = 1, [g for g in group if g != e.checkpoint]
        if e.checkpoint == answer["leader"]:
            e.p_best = answer["p_best"]
    return [entries[i] for i in order] + [e for i, e in enumerate(entries) if i not in order]


def rank_cascade(
    candidates: Sequence[Candidate],
    data: TaskData,
    config: TrainConfig,
    rank: RankConfig,
    *,
    dataset_name: str = "",
    on_progress: ProgressFn | None = None,
    prepare_seconds: float = 0.0,
) -> RankingResult:
    """Rank ``candidates`` by the cascade (module docstring) in this process; ``config`` is the norm-only budget.
    The racers' runs continue in memory from round to round (the same runs as re-trained ones, see finetune_run).
    ``prepare_seconds``: the measured loading and preprocessing of ``data``, counted in the cost once."""
    started = time.perf_counter()
    budget, small = stage_config(config, data)
    entries = []
    for i, cand in enumerate(candidates):
        if on_progress:
            on_progress(i, len(candidates), f"norm-only: {cand.name}")
        entries.append(evaluate_candidate(cand, data, budget))
    found, member = control_groups(entries, candidates)
    controls: dict[str, list[RankEntry]] = {}
    for control in found:
        for seed in control_seeds(budget, rank):
            controls.setdefault(control.name, []).append(evaluate_control(control, data, budget, rank, seed))
    stage = stage_one(entries, member, controls, rank)
    done = [*entries, *(e for r in controls.values() for e in r)]
    spent = prepare_seconds + sum(e.seconds for e in done)
    race = start_race(stage, spent, sum(e.steps for e in done), costs(stage, controls, rank, prepare_seconds))
    runs: dict[int, list[FineTuneRun]] = {}
    ends = race_ends(rank)
    k = 0
    while may_run(race, stage, rank, k):
        finished: dict[int, list[RankEntry]] = {}
        for i in race.alive:
            if on_progress:
                on_progress(k, len(ends), f"race round {k + 1}: {candidates[i].name} to {ends[k]} steps")
            finished[i] = []
            for seed in race_seeds(config, rank):
                entry = RankEntry(checkpoint=candidates[i].name)
                t0 = time.perf_counter()
                try:
                    if len(runs.setdefault(i, [])) < rank.race_seeds:
                        runs[i].append(FineTuneRun(candidates[i], data, race_config(budget, rank, seed), score_at=ends))
                    run = runs[i][race_seeds(config, rank).index(seed)].run(ends[k])
                    result = run.result()
                    entry.score, entry.case_scores = result.score, result.case_scores
                except BNRankError as exc:
                    entry.status, entry.error = "failed", str(exc)
                entry.seconds = round(time.perf_counter() - t0, 3)  # this round's share of the continued run
                finished[i].append(entry)
        close_round(race, stage, rank, k, finished, config.seed, retrained=False)
        k += 1
    answer = verdict(stage, race, rank, entries, member, controls, config.seed)
    ordered = apply_answer(entries, stage, answer)
    cascade, stability, ties = summary(stage, race, answer, rank, len(candidates), small, budget)
    cascade["cost"]["seconds"] = round(time.perf_counter() - started, 3)
    cascade["cost"]["prepare_seconds"] = round(prepare_seconds, 3)
    return RankingResult(
        dataset=dataset_name,
        entries=[*ordered, *(e for r in controls.values() for e in r)],
        config={**asdict(config), "rank": asdict(rank)},
        stability=stability,
        ties=ties,
        cascade=cascade,
    )
