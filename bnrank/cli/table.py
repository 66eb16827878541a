"""The ranking table `bnrank rank` prints, and `bnrank remote` and `bnrank demo` print for a served ranking.

Reads the engine's plain result types only (bnrank/engine/entries.py), so printing a served ranking loads
no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnrank.engine.entries import RankEntry, RankingResult
from bnrank.engine.formats.conversion import conversion_line


def _fmt(x: float | None) -> str:
    return "   -  " if x is None else f"{x:6.3f}"


def _after_bn(entry: RankEntry, key: str) -> float | None:
    """One figure of the γ summary after BN-only training (the table's γ columns)."""
    phase = entry.gamma.get("after_bn") or {}
    return phase.get("summary", {}).get(key)


def _norms(entry: RankEntry) -> str:
    """The normalisation kinds norm-only evaluation trained, for the table's norm column."""
    return ",".join(entry.norm_kinds) or "-"


def _trained(entry: RankEntry) -> str:
    return f"{entry.trained_parameters:>9,}" if entry.trained_parameters is not None else f"{'-':>9}"


def _share(x: float | None) -> str:
    return f"{x:7.1%}" if x is not None else f"{'-':>7}"


def print_sources(entries: list[RankEntry]) -> None:
    """Each candidate's file format, and for a converted graph (ONNX, TorchScript through the sandbox) its
    conversion report: operators, norms found, affines inserted, head chosen."""
    loaded = [e for e in entries if not e.is_control and e.load_report]
    if not loaded:
        return
    counts: dict[str, int] = {}
    for e in loaded:
        fmt = str(e.load_report.get("format") or "?")  # type: ignore[union-attr]
        counts[fmt] = counts.get(fmt, 0) + 1
    print("formats: " + ", ".join(f"{fmt} ×{n}" for fmt, n in counts.items()))
    for e in loaded:
        line = conversion_line((e.load_report or {}).get("source"))
        if line:
            print(f"conversion of {e.checkpoint}: {line}")


def print_ranking(result: RankingResult, logme: dict[str, float | None] | None = None) -> None:
    """The ranking table; ``logme`` (checkpoint → LogME score) adds a column beside the BN-only score."""
    classes = list(next((e.dice_per_class for e in result.entries if e.dice_per_class), {}))
    header = f"{'rank':>4}  {'score':>6}  " + "  ".join(f"{c[:10]:>10}" for c in classes)
    if logme is not None:
        header += f"  {'LogME':>6}"
    # trained: parameters norm-only evaluation trained (γ/β + head); norm: the normalisation kinds they belong to
    # ("+affine-inserted" where an identity affine was added after a norm without one), so a mixed pool reads.
    norm_w = max([4, *(len(_norms(e)) for e in result.entries)])
    trained_header = f"{'trained':>9}  {'norm':<{norm_w}}"
    # γ<0.05: the absolute share the thesis reads; γ<.1med: the share under a tenth of its own layer's median
    # |γ|, which moves at ranking budgets where the absolute one stays at 0 (issue 10, item 10); |Δγ|: the mean
    # change of γ during BN-only training (RankEntry.gamma_change).
    header += f"  {'tie':>3}  {'γ<0.05':>7}  {'γ<.1med':>7}  {'|Δγ|':>7}  {'steps':>5}  {'sec':>6}  "
    header += f"{trained_header}  checkpoint"
    print(header)
    print("-" * len(header))
    for e in result.entries:
        cells = "  ".join(f"{_fmt(e.dice_per_class.get(c)):>10}" for c in classes) if e.status == "ok" else ""
        rank = str(e.rank) if e.rank else "-"
        gamma = f"{_share(_after_bn(e, 'share_below'))}  {_share(_after_bn(e, 'share_below_relative'))}"
        gamma += f"  {e.gamma_change:7.4f}" if e.gamma_change is not None else f"  {'-':>7}"
        tie = str(e.tie_group) if e.tie_group is not None else "-"
        if logme is not None:
            cells += f"  {_fmt(logme.get(e.checkpoint))}"
        trained = f"{_trained(e)}  {_norms(e):<{norm_w}}"
        line = f"{rank:>4}  {_fmt(e.score)}  {cells}  {tie:>3}  {gamma}  {e.steps:>5}  {e.seconds:6.1f}  {trained}  "
        line += e.checkpoint
        if e.status != "ok":
            line = f"{rank:>4}  {'FAILED':>6}  {e.checkpoint}: {e.error}"
        print(line)
    print_sources(result.entries)
    if result.cascade is not None:
        print_cascade(result.cascade)
        return
    print_ties(result.ties)
    s = result.stability
    if s.get("kendall_tau") is not None:
        print(
            f"stability: order at {s['at_fraction']:.0%} of the budget vs the end, Kendall τ = "
            f"{s['kendall_tau']:.2f}, same top-1: {'yes' if s['same_top1'] else 'no'}"
        )


def print_ties(ties: dict[str, Any]) -> None:
    """What the order is worth at this budget: who the top cannot be told apart from, and what to do."""
    top = ties.get("top_group") or []
    if not top:
        return
    p = ties.get("p_top_is_best")
    odds = f"; P(rank 1 is best) = {p:.2f}" if p is not None else ""
    if len(top) == 1:
        print(f"ties: rank 1 stands apart at this budget{odds}")
    else:
        names = ", ".join(Path(n).stem if n.endswith(".safetensors") else n for n in top)
        print(
            f"ties: the top {len(top)} are tied at this budget ({names}){odds}; fine-tune these {len(top)}, not every "
            "candidate, or rank again with more steps"
        )
    if ties.get("reconciled"):
        print(f"  ({ties['reconciled']})")


def print_cascade(cascade: dict[str, Any]) -> None:
    """The cascade's stages: the noise floor, who raced, who was cut in which round and why, and one verdict (its
    tie guidance and stability come from the same rounds, so they are printed as one line)."""
    first, race = cascade["stages"]
    for f in first["noise_floor"]:
        print(
            f"noise floor: {f['control']}: controls {f['scores']} (s.d. {f['sd']:.4f}); gains within {f['floor']:.4f}"
        )
    inside = [r["name"] for r in first["rows"] if r.get("inside_noise_floor")]
    if inside:
        print(f"inside the noise floor (no better than random init): {', '.join(inside)}")
    small = cascade["small_structures"]
    if small.get("small"):
        print(
            f"small structure ({small['smallest_foreground_share']:.4f} of the voxels): scored by {small['score']}, "
            f"{small['max_steps']} norm-only steps"
        )
    print(
        f"race: {', '.join(race['leaders']) or 'nobody'} at {race['config']['seeds']} seed(s), "
        f"rounds ending at {race['config']['ends']} fine-tuning steps"
    )
    for r in race["rounds"]:
        if "skipped" in r:
            print(f"  round {r['round']} ({r['steps']} steps): not run, {r['skipped']}")
            continue
        standings = ", ".join(f"{x['name']} {x['score']:.4f} (P(best) {x['p_best']:.2f})" for x in r["racers"])
        print(f"  round {r['round']} ({r['steps']} steps): {standings}")
        for cut in r["cut"]:
            print(f"    cut: {cut['name']}: {cut['why']}")
    print(f"stop: {cascade['stop']}; {cost_line(cascade['cost'])}")
    print(f"verdict: {cascade['verdict']['guidance']} [{cascade['verdict']['evidence']}]")


def cost_line(cost: dict) -> str:
    """The cascade's cost in measured seconds against fine-tuning every candidate, as its step cost was calibrated."""
    if cost.get("spent_seconds") is None:  # a cascade stored before costs were measured in seconds
        return f"cost {cost.get('spent_steps')} training steps (cap {cost.get('budget_cap', 0):.0%}, counted in steps)"
    line = f"cost {cost['spent_seconds']:.1f} s measured ({cost['spent_steps']} training steps)"
    if cost.get("reference_seconds"):
        line += (
            f" = {cost['share_of_finetuning_all']:.1%} of fine-tuning every candidate for {cost['reference_steps']} "
            f"steps ({cost['reference_seconds']:.0f} s at the calibrated step cost; cap {cost['budget_cap']:.0%})"
        )
    else:
        line += "; no calibrated step cost, so no share of fine-tuning all and no race"
    if cost.get("retraining_seconds"):
        line += f"; {cost['retraining_seconds']:.1f} s more re-training earlier rounds (the service's tasks)"
    return line
