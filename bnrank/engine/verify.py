"""The ranking's self-check: fine-tune a few candidates for real and see whether they keep their order.

A BN-only (or LogME) ranking is a proxy for what fine-tuning would give. ``verify_ranking`` fine-tunes
the top K and the bottom candidate (all parameters, a short budget, one seed and patch schedule for all,
the same fresh head for all, as BN-only evaluation does) and reports whether the fine-tuned order of
those K + 1 agrees with the ranking's order. It costs K + 1 fine-tunings, so it is opt-in
(``bnrank rank --verify K``).

Its budget is the ranking-quality benchmark's converged one (docs/ranking-quality.md, "--verify"): 600 steps at
lr 3e-3 decaying on a cosine to 0, as the benchmark's ground truth. At its former 80 steps one seed's order agreed
with the other seeds' at leave-one-seed-out τw 0.44-0.72 on the evaluation tasks, so a disagreement said little;
at 600 steps 0.64-0.94, and no false alarm on the benchmark for K <= 2 (bench/ranking_quality.py --report).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from scipy.stats import kendalltau

from bnrank.engine.configs.ranking import VERIFY_LR, VERIFY_STEPS
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.entries import RankEntry, RankingResult
from bnrank.engine.errors import BNRankError
from bnrank.engine.finetune_run import FineTuneRun
from bnrank.engine.ranking import Candidate, control_candidates
from bnrank.engine.training.patches import TaskData
from bnrank.engine.training.trainer import ProgressFn, TrainResult


def finetune_candidate(
    candidate: Candidate,
    data: TaskData,
    config: TrainConfig,
    *,
    on_progress: ProgressFn | None = None,
    cosine: bool = True,
) -> TrainResult:
    """Fine-tune every parameter of a candidate from the run's fresh head (seeded like BN-only evaluation).

    With ``cosine`` the learning rate decays from ``config.lr`` to 0 over ``config.max_steps`` as in the
    benchmark's ground truth (bnrank/engine/finetune_run.py).
    """
    return FineTuneRun(candidate, data, config, cosine=cosine, on_progress=on_progress).run().result()


def _candidate_for(entry: RankEntry, candidates: Sequence[Candidate], entries: Sequence[RankEntry]) -> Candidate:
    """The Candidate an entry was made from; controls are rebuilt the way the ranking built them."""
    by_name = {c.name: c for c in candidates}
    if not entry.is_control and entry.checkpoint in by_name:
        return by_name[entry.checkpoint]
    own = {e.checkpoint: e for e in entries if not e.is_control}
    paired = [(own[c.name], c) for c in candidates if c.name in own]
    for control in control_candidates([e for e, _ in paired], [c for _, c in paired]):
        if control.name == entry.checkpoint:
            return control
    raise BNRankError(f"cannot find the candidate behind ranking entry {entry.checkpoint!r}")


def verify_config(config: TrainConfig, steps: int = VERIFY_STEPS, lr: float = VERIFY_LR) -> TrainConfig:
    """The ranking's config with a fine-tuning budget: same seed, patches and validation, no early stop, and
    validation only where the score is taken (the last ``score_window`` validations), not every few steps."""
    return replace(
        config,
        max_steps=steps,
        lr=lr,
        patience=10**6,
        val_every=min(config.val_every, steps),
        weight_decay=0.0,
        validate_at="scored",
    )


def verify_ranking(
    result: RankingResult,
    candidates: Sequence[Candidate],
    data: TaskData,
    config: TrainConfig,
    k: int,
    *,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Fine-tune the ranking's top ``k`` and its bottom entry; does the fine-tuned order agree?

    ``config`` is the fine-tuning budget (see ``verify_config``). Returns a JSON-ready report: one row per
    checked entry (ranking rank and score, fine-tuned score and rank among the checked), Kendall τ between
    the two orders, whether they agree exactly, whether the top-1 and the bottom stay where they were.
    """
    if k < 1:
        raise BNRankError(f"--verify needs K >= 1, got {k}")
    ranked = sorted((e for e in result.entries if e.status == "ok" and e.rank), key=lambda e: e.rank)
    picked = ranked[:k]
    if len(ranked) > k:
        picked.append(ranked[-1])
    report: dict[str, Any] = {
        "k": k,
        "config": {"max_steps": config.max_steps, "lr": config.lr, "seed": config.seed},
        "checked": [],
        "agrees": None,
        "kendall_tau": None,
        "concordant_pairs": None,
        "same_top1": None,
        "bottom_stays_last": None,
        "seconds": 0.0,
    }
    if len(picked) < 2:
        report["note"] = "fewer than two ranked entries: nothing to compare"
        return report
    started = time.perf_counter()
    rows = []
    for i, entry in enumerate(picked):

        def progress(step: int, total: int, msg: str, i: int = i) -> None:
            if on_progress:
                on_progress(i * total + step, len(picked) * total, f"verify: {msg}")

        row: dict[str, Any] = {"checkpoint": entry.checkpoint, "rank": entry.rank, "score": entry.score}
        t0 = time.perf_counter()
        try:
            candidate = _candidate_for(entry, candidates, result.entries)
            trained = finetune_candidate(candidate, data, config, on_progress=progress)
        except BNRankError as exc:
            row.update(status="failed", error=str(exc), finetuned_score=None)
        else:
            row.update(status="ok", finetuned_score=trained.score, steps=trained.steps)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
    ok = [r for r in rows if r["status"] == "ok"]
    for rank, row in enumerate(sorted(ok, key=lambda r: -r["finetuned_score"]), start=1):
        row["finetuned_rank"] = rank
    report["checked"] = rows
    report["seconds"] = round(time.perf_counter() - started, 3)
    if len(ok) >= 2:
        proxy = [-r["rank"] for r in ok]
        truth = [r["finetuned_score"] for r in ok]
        pairs = [(i, j) for i in range(len(ok)) for j in range(i + 1, len(ok))]
        concordant = sum((proxy[i] - proxy[j]) * (truth[i] - truth[j]) > 0 for i, j in pairs)
        tau = kendalltau(proxy, truth).statistic
        report["kendall_tau"] = None if tau is None or math.isnan(tau) else round(float(tau), 4)
        report["concordant_pairs"] = [int(concordant), len(pairs)]
        report["agrees"] = concordant == len(pairs)
        first = min(ok, key=lambda r: r["rank"])
        last = max(ok, key=lambda r: r["rank"])
        report["same_top1"] = first["finetuned_rank"] == 1
        report["bottom_stays_last"] = last["finetuned_rank"] == len(ok)
    return report


def format_verify(report: dict[str, Any]) -> str:
    """The verify report as the few lines the CLI prints under the ranking."""
    cfg = report["config"]
    lines = [
        f"verify: fine-tuned the top {report['k']} and the bottom entry, all parameters, "
        f"{cfg['max_steps']} steps at lr {cfg['lr']:g} cosine to 0 (seed {cfg['seed']}), {report['seconds']:.0f}s"
    ]
    if report.get("note"):
        return lines[0] + f"\n  {report['note']}"
    lines.append(f"  {'rank':>4}  {'score':>7}  {'fine-tuned':>10}  {'ft rank':>7}  checkpoint")
    for r in report["checked"]:
        ft = "FAILED" if r["status"] != "ok" else f"{r['finetuned_score']:.3f}"
        lines.append(
            f"  {r['rank']:>4}  {r['score']:7.3f}  {ft:>10}  {r.get('finetuned_rank', '-')!s:>7}  {r['checkpoint']}"
        )
    if report["agrees"] is not None:
        c, n = report["concordant_pairs"]
        lines.append(
            f"  order agrees: {'yes' if report['agrees'] else 'NO'} ({c}/{n} pairs concordant, Kendall τ "
            f"{report['kendall_tau'] if report['kendall_tau'] is not None else 'n/a'}); same top-1: "
            f"{'yes' if report['same_top1'] else 'no'}; bottom stays last: "
            f"{'yes' if report['bottom_stays_last'] else 'no'}"
        )
    return "\n".join(lines)
