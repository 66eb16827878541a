"""Benchmark v2's tables from whatever raw JSON has landed under bench/results/v2/, and its decision rule.

For every task: how many of its runs have landed ("n of N"), the ground truth (ceiling, seed s.d., tied top
group), then one table with the registered baselines (architecture prior, parameter count, random pick, LogME,
norm-only alone, short fine-tuning at equal cost) and every registered strategy setting
(``bench/v2_strategies.py``): τw and top-1 regret as means over proxy seeds of each seed's ranking, with 95 %
intervals over GT seeds, proxy seeds and test cases, regret in GT seed s.d., the pick's share in the tied top
group, the proxy's seed-to-seed τw and cost as a share of fine-tuning every candidate (CPU seconds, loading and
preprocessing included); the same within each family. A table made from a partial set of runs says so.

Once the tuning task's ground truth and proxies are complete, the pre-registered decision rule is applied and
its choice printed (``--decision PATH`` also writes it as JSON); the evaluation tasks' summary then checks issue
18's targets for that setting. Results made from candidate files of different weights (a zoo rebuilt on another
CPU) are never mixed: the report refuses and names them.

    python bench/report_v2.py [--bootstrap N] [--decision PATH]
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import baseline_stats as bs  # noqa: E402
import quality_stats as qs  # noqa: E402
import ranking_quality as rq  # noqa: E402
import v2_strategies as st  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "v2"
PREREGISTRATION = ROOT / "bench" / "preregistration_v2.json"
family_of = st.family_of


class MixedWeights(SystemExit):
    """Raised when one candidate's runs were made from different weights (different ``weights_sha256``)."""


def prereg() -> dict[str, Any]:
    return rq.load(PREREGISTRATION)


def candidates() -> list[str]:
    doc = prereg()
    return [r["name"] for f in ("unet3d", "nnunet") for r in doc["candidates"][f]]


def controls() -> list[str]:
    return [r["name"] for r in prereg()["controls"]]


def proxy_files(task: str) -> list[Path]:
    """Every proxy file the registration asks for on ``task`` (whether it has landed or not)."""
    p = prereg()["proxies"]
    folder = RESULTS / "proxies" / task
    out = []
    for s in p["seeds"]:
        out.append(folder / f"logme_b{p['logme']['batches']}_seed{s}.json")
        out += [folder / f"normonly_lr{lr:g}_seed{s}.json" for lr in p["norm_only"]["lrs"]]
        out.append(folder / f"shortft_seed{s}.json")
    return out


def gt_files(task: str) -> list[Path]:
    seeds = prereg()["ground_truth"]["seeds"]
    return [RESULTS / "ground_truth" / task / c / f"seed{s}.json" for c in candidates() for s in seeds]


# ------------------------------------------------------------------------------------------------ weights


def check_weights() -> str:
    """Every candidate's ``weights_sha256`` across the zoo manifests, ground-truth runs and proxy files must agree;
    raise :class:`MixedWeights` naming the candidates and files that differ. Returns a one-line summary."""
    seen: dict[str, dict[str, list[str]]] = {}
    counts = {"zoo": 0, "gt": 0, "proxy": 0, "without": 0}

    def note(name: str, digest: str | None, where: Path) -> None:
        if digest is None:
            counts["without"] += 1
            return
        seen.setdefault(name, {}).setdefault(digest, []).append(str(where.relative_to(RESULTS)))

    for path in sorted((RESULTS / "zoo").glob("*.json")):
        counts["zoo"] += 1
        note(path.stem, rq.load(path).get("weights_sha256"), path)
    for path in sorted((RESULTS / "ground_truth").glob("*/*/seed*.json")):
        counts["gt"] += 1
        r = rq.load(path)
        note(r.get("candidate", path.parent.name), r.get("weights_sha256"), path)
    for path in sorted((RESULTS / "proxies").glob("*/*.json")):
        counts["proxy"] += 1
        hashes = rq.load(path).get("weights_sha256")
        if not isinstance(hashes, Mapping):
            counts["without"] += 1
            continue
        for name, digest in hashes.items():
            note(name, digest, path)
    mixed = {n: h for n, h in seen.items() if len(h) > 1}
    if mixed:
        lines = ["REFUSED: runs made from different candidate weights (weights_sha256) would be mixed:"]
        for name, hashes in sorted(mixed.items()):
            for digest, where in hashes.items():
                shown = ", ".join(where[:4]) + (f" and {len(where) - 4} more" if len(where) > 4 else "")
                lines.append(f"  {name} {digest[:12]}: {shown}")
        lines.append(
            "  (a zoo built on another CPU gives other weights: rerun those results on one zoo, or move one set away)"
        )
        raise MixedWeights("\n".join(lines))
    return (
        f"WEIGHTS: one weights_sha256 per candidate across {counts['zoo']} zoo manifests, {counts['gt']} ground-truth "
        f"runs and {counts['proxy']} proxy files"
        + (f" ({counts['without']} records carry none)" if counts["without"] else "")
    )


def code_line() -> str:
    """Which commits computed the results, by count: the run spans sessions, and an engine change between them
    (how a head starts, say) is read here rather than found in a table. Records before the field name none."""
    counts: dict[str, int] = {}
    for path in sorted(RESULTS.glob("ground_truth/*/*/seed*.json")) + sorted(RESULTS.glob("proxies/*/*.json")):
        code = rq.load(path).get("code") or "unrecorded"
        counts[code] = counts.get(code, 0) + 1
    shown = ", ".join(f"{c[:10]} × {n}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"CODE: results by the commit that computed them: {shown or 'none yet'}"


# ------------------------------------------------------------------------------------------------ reading


def _rebased(doc: Mapping[str, Any]) -> set[str]:
    return {r["candidate"] for r in doc.get("rebased", []) if r.get("rerun")}


def _peer_cpu(cpu: dict[str, float], rebased: set[str]) -> dict[str, float]:
    """``cpu`` with each rebased control's seconds read as the mean of its family's other controls in the file: the
    rerun was timed on another machine, and every control of a family does the same work."""
    out = dict(cpu)
    for name in rebased & set(cpu):
        peers = [v for k, v in cpu.items() if st.is_control(k) and k not in rebased and family_of(k) == family_of(name)]
        out[name] = float(np.mean(peers)) if peers else math.nan
    return out


# Two machine classes are read as one where a machine check (bench/v2_machine_check.py) reran committed
# ground-truth runs and reproduced their test Dice to the bit (the same kernels at the same precision) at a median
# training CPU-seconds ratio inside this band (the same speed, within the noise of a shared 2-core machine).
SAME_SPEED = (0.8, 1.25)


def same_classes(root: Path | None = None) -> dict[str, str]:
    """{machine class: the class a check measured it to be}, each chain followed to its end.

    A run's class is what it records (:func:`rq.run_class`): its CPU and precision, or for older runs only the
    run's commit, so one machine can appear under two names; costs compare only within one class, and this is
    the measured evidence that lets two names count as one."""
    out: dict[str, str] = {}
    for path in sorted(((root or RESULTS) / "checks").glob("*.json")):
        doc = rq.load(path)
        runs = doc.get("runs")
        if not isinstance(runs, list) or not runs or not isinstance(doc.get("machine"), Mapping):
            continue
        committed = {r.get("committed_class") for r in runs}
        ratios = [
            r["here_train_cpu_seconds"] / r["committed_train_cpu_seconds"]
            for r in runs
            if r.get("here_train_cpu_seconds") and r.get("committed_train_cpu_seconds")
        ]
        same_bits = all(r["here"] == r["committed"] for r in runs)
        same_speed = len(ratios) == len(runs) and SAME_SPEED[0] <= float(np.median(ratios)) <= SAME_SPEED[1]
        if len(committed) == 1 and same_bits and same_speed:
            here = rq.run_class({"machine": doc["machine"]})
            if here != (target := committed.pop()):
                out[here] = target
    for k in list(out):
        seen = {k}
        while out[k] in out and out[out[k]] not in seen:
            seen.add(out[k])
            out[k] = out[out[k]]
    return out


def seed_runs(
    task: str, cands: Sequence[str], ref: str | None = None, aliases: Mapping[str, str] | None = None
) -> list[st.SeedRuns]:
    """Each proxy seed's runs on ``task``, with the settings whose files hold every candidate (and control).

    CPU seconds count only from files made on the ``ref`` machine class (:func:`rq.run_class`, read through
    ``aliases``: :func:`same_classes`), the one the ground truth's fine-tuning cost is read on; a file from
    another class gives scores but NaN seconds."""
    doc = prereg()
    p = doc["proxies"]
    folder = RESULTS / "proxies" / task
    aliases = aliases or {}

    def on_ref(record: Mapping[str, Any]) -> bool:
        k = rq.run_class(record)
        return ref is None or aliases.get(k, k) == ref

    tasks = rq.load(RESULTS / "tasks.json") if (RESULTS / "tasks.json").is_file() else {}
    out = []
    for s in p["seeds"]:
        runs = st.SeedRuns(seed=s, load_cpu=float(tasks.get(task, {}).get("load_cpu_seconds", 0.0)))
        path = folder / f"logme_b{p['logme']['batches']}_seed{s}.json"
        if path.is_file():
            doc_ = rq.load(path)
            e, same = doc_["entries"], on_ref(doc_)
            if all(c in e for c in cands):
                scores = qs.failed_last([e[c]["score"] for c in cands])
                runs.logme = dict(zip(cands, scores, strict=True))
                runs.logme_cpu = {c: e[c]["cpu_seconds"] if same else math.nan for c in cands}
        want = [*cands, *controls()]
        for lr in p["norm_only"]["lrs"]:
            path = folder / f"normonly_lr{lr:g}_seed{s}.json"
            if not path.is_file():
                continue
            doc_ = rq.load(path)
            e, same = doc_["entries"], on_ref(doc_)
            runs.load_cpu = float(doc_.get("load_cpu_seconds", runs.load_cpu))
            have = [c for c in want if c in e and e[c]["status"] == "ok"]
            if not all(c in have for c in cands):
                continue
            for steps in p["norm_only"]["steps"]:
                for key, label in (("dice", "dice"), ("score", "soft_dice")):
                    name = f"lr {lr:g} {steps} st {label}"
                    runs.norm[name] = {c: qs.windowed(e[c]["curve"], steps, key, 1) for c in have}
                    cpu = {c: qs.cpu_at(e[c], steps) for c in have}
                    runs.norm_cpu[name] = _peer_cpu(cpu, _rebased(doc_)) if same else dict.fromkeys(have, math.nan)
        path = folder / f"shortft_seed{s}.json"
        if path.is_file():
            doc_ = rq.load(path)
            e, same = doc_["entries"], on_ref(doc_)
            if all(c in e for c in cands):
                for i, steps in enumerate(p["short_finetune"]["steps"]):
                    runs.ft[steps] = {c: e[c]["budgets"][i]["dice"] for c in cands}
                    runs.ft_cpu[steps] = {
                        c: e[c]["budgets"][i]["train_cpu_seconds"]
                        + e[c].get("eval_cpu_seconds", e[c].get("eval_seconds", 0.0)) * (i + 1) / len(e[c]["budgets"])
                        if same
                        else math.nan
                        for c in cands
                    }
        out.append(runs)
    return out


def param_counts(cands: Sequence[str]) -> dict[str, int] | None:
    """Each candidate's parameter count (1 input channel, 2 classes), from its registered recipe; built, never
    trained. None where the networks cannot be built here."""
    try:
        import benchmark_v2 as b2
        import zoo as Z

        recipes = {r.name: r for f in b2.recipes().values() for r in f}
        return {c: int(sum(p.numel() for p in Z._build(recipes[c], 1, 2).parameters())) for c in cands}
    except Exception:  # a missing optional network package only drops this baseline
        return None


# ------------------------------------------------------------------------------------------------ measures


def measure(scores: np.ndarray, conv: np.ndarray, group: Sequence[int], sd: float) -> dict[str, float]:
    """Means over proxy seeds (rows of ``scores``) of each seed's τw, regret (Dice and in seed s.d.), in-group."""
    rows = [bs.measures(s, conv, group, sd) for s in scores]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def bootstrap(conv: np.ndarray, scores: np.ndarray, n: int, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % intervals of the per-seed means over draws of GT seeds, test cases and proxy seeds together."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"wtau": [], "regret": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(n):
            seeds = rng.integers(0, conv.shape[0], conv.shape[0])
            cases = rng.integers(0, conv.shape[2], conv.shape[2])
            rows = scores[rng.integers(0, len(scores), len(scores))]
            truth = qs.gt_mean(conv[seeds][:, :, cases])
            draws["wtau"].append(float(np.nanmean([qs.wtau(r, truth) for r in rows])))
            draws["regret"].append(float(np.mean([bs.regret(r, truth) for r in rows])))
    out = {}
    for k, v in draws.items():
        a = np.asarray([x for x in v if math.isfinite(x)])
        out[k] = tuple(np.percentile(a, [2.5, 97.5]).tolist()) if a.size else (float("nan"), float("nan"))
    return out


def task_state(task: str) -> dict[str, Any]:
    """What has landed on ``task``: GT runs and proxy files, n of N each, and whether both are complete."""
    gt_have = sum(p.is_file() for p in gt_files(task))
    px = proxy_files(task)
    px_have = sum(p.is_file() for p in px)
    return {
        "gt": (gt_have, len(gt_files(task))),
        "proxies": (px_have, len(px)),
        "complete": gt_have == len(gt_files(task)) and px_have == len(px),
    }


class TaskTables:
    """Every measured order on one task: {label: measures}, plus the ground truth's facts."""

    def __init__(
        self,
        task: str,
        tuning_mean: Mapping[str, float] | None,
        boot: int,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.task = task
        self.state = task_state(task)
        self.gt = rq.read_gt(task, candidates=candidates(), root=RESULTS)
        self.ok = self.gt is not None and len(self.gt["seeds"]) >= 2
        self.rows: dict[str, dict[str, Any]] = {}
        self.orders: dict[str, np.ndarray] = {}
        if not self.ok:
            return
        gt = self.gt
        self.cands = cands = gt["candidates"]
        self.conv = conv = gt["gt"][gt["budgets"][-1]]
        self.sd = bs.seed_sd(conv)
        self.group = bs.tied_top_group(conv, n=boot)
        # Costs are read on one machine class (rq.run_class), the one that made most of the ground truth: fine-tuning
        # every candidate is the mean of each candidate's runs there, and proxy files from other classes give
        # scores but no seconds.
        self.aliases = aliases = same_classes() if aliases is None else aliases
        self.run_classes = classes = np.array([[aliases.get(k, k) for k in row] for row in gt["classes"]], dtype=object)
        names, counts = np.unique(classes, return_counts=True)
        self.classes = dict(zip(names.tolist(), counts.tolist(), strict=True))
        self.ref = str(names[np.argmax(counts)])
        self.runs = seed_runs(task, cands, self.ref, aliases)
        load = self.runs[0].load_cpu if self.runs else 0.0
        here = np.where(classes == self.ref, gt["train_seconds"], np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self.ft_all = float(np.nanmean(here, axis=0).sum()) + load  # NaN if a candidate has no run there
        self.boot = boot
        self.prior = None
        if tuning_mean is not None:
            fam = {c: family_of(c) for c in (*cands, *tuning_mean)}
            self.prior = dict(zip(cands, bs.architecture_prior(tuning_mean, fam, cands), strict=True))
        per_setting: dict[str, list[st.Order]] = {}
        for r in self.runs:
            for label, order in st.strategy_orders(r, cands, self.prior).items():
                per_setting.setdefault(label, []).append(order)
            if r.logme is not None:
                per_setting.setdefault("LogME b8", []).append(
                    st.Order([r.logme[c] for c in cands], r.load_cpu + sum(r.logme_cpu.values()))  # type: ignore[union-attr]
                )
        if self.prior is not None:
            per_setting["architecture prior"] = [st.Order([self.prior[c] for c in cands], 0.0)]
        params = param_counts(cands)
        if params is not None:
            per_setting["parameter count"] = [st.Order([float(params[c]) for c in cands], 0.0)]
        first = ("architecture prior", "parameter count", "LogME b8")
        kinds = list(prereg()["strategies"])
        for label in sorted(
            per_setting,
            key=lambda k: (
                first.index(k) if k in first else len(first),
                kinds.index(k.split()[0]) if k.split()[0] in kinds else -1,
            ),
        ):
            self.add(label, per_setting[label])

    def add(self, label: str, orders: Sequence[st.Order]) -> None:
        scores = np.array([o.scores for o in orders], float)
        m = measure(scores, self.conv, self.group, self.sd)
        costs = [o.cpu for o in orders if math.isfinite(o.cpu)]
        m["cost"] = float(np.mean(costs)) / self.ft_all if costs else math.nan
        m["seeds"] = len(orders)
        m["flagged"] = float(np.mean([len(o.flagged) for o in orders]))
        agree = [t for t in qs.loso(scores) if math.isfinite(t)] if len(scores) > 1 else []
        m["self_wtau"] = float(np.mean(agree)) if agree else float("nan")
        self.rows[label] = m
        self.orders[label] = scores

    def intervals(self, label: str) -> dict[str, tuple[float, float]]:
        return bootstrap(self.conv, self.orders[label], self.boot)

    def within(self, label: str, fam: str) -> dict[str, float]:
        idx = [i for i, c in enumerate(self.cands) if family_of(c) == fam]
        sub = self.conv[:, idx, :]
        if label == "random pick":
            m = bs.random_pick(qs.gt_mean(sub), bs.tied_top_group(sub, n=self.boot))
            return {"wtau": m["wtau"], "regret_sd": m["regret"] / bs.seed_sd(sub)}
        return measure(self.orders[label][:, idx], sub, bs.tied_top_group(sub, n=self.boot), bs.seed_sd(sub))


# ------------------------------------------------------------------------------------------------ the rule


def decision(tuning: TaskTables) -> dict[str, Any]:
    """The registered rule on the tuning task, applied only when its ground truth and proxies are complete."""
    if not tuning.state["complete"] or not tuning.ok:
        (g, gn), (p, pn) = tuning.state["gt"], tuning.state["proxies"]
        return {
            "status": "pending",
            "why": f"tuning task incomplete: ground truth {g} of {gn} runs, proxies {p} of {pn} files",
        }
    strategies = {k: m for k, m in tuning.rows.items() if k.split()[0] in prereg()["strategies"]}
    chosen = st.decide(strategies)
    alone = st.decide({k: m for k, m in strategies.items() if k.startswith("norm_only ")})
    if chosen is None:
        return {"status": "none eligible", "why": f"no strategy setting costs ≤ {st.COST_CAP:.0%} of fine-tuning all"}
    return {"status": "chosen", **chosen, "norm_only_alone": None if alone is None else alone["chosen"]}


def equal_cost_ft(t: TaskTables, cost: float) -> str | None:
    ft = [k for k in t.rows if k.startswith("short_finetune ")]
    return min(ft, key=lambda k: abs(t.rows[k]["cost"] - cost)) if ft else None


# ------------------------------------------------------------------------------------------------ printing


def f2(x: float, spec: str = ".2f") -> str:
    return rq.f2(x, spec)


def header(t: TaskTables) -> str:
    (g, gn), (p, pn) = t.state["gt"], t.state["proxies"]
    mark = "" if t.state["complete"] else " — INCOMPLETE: tables below use what has landed"
    return f"TASK {t.task}: ground truth {g} of {gn} runs, proxies {p} of {pn} files{mark}"


def task_lines(t: TaskTables, tuning: str, dec: dict[str, Any]) -> list[str]:
    lines = [header(t)]
    if not t.ok:
        return [*lines, "  fewer than 2 complete ground-truth seeds yet: no table"]
    gt, cands, conv = t.gt, t.cands, t.conv
    lines.append(
        f"  GT = test Dice after {gt['budgets'][-1]} steps, seeds {gt['seeds']}"
        + (f" (incomplete: {gt['incomplete_seeds']})" if gt["incomplete_seeds"] else "")
        + f"; ceiling {f2(qs.ceiling(conv))}; seed s.d. {t.sd:.4f}; tied top group: "
        f"{', '.join(cands[i] for i in t.group)}; fine-tuning all: {t.ft_all:.0f} CPU s (loading included)"
    )
    lines.append(
        "  MACHINES: ground-truth runs by class: "
        + ", ".join(f"{k} × {n}" for k, n in sorted(t.classes.items(), key=lambda kv: -kv[1]))
        + f"; costs (× FT) are read on {t.ref} only"
        + "".join(f" (with {k}: one class by machine check)" for k, v in sorted(t.aliases.items()) if v == t.ref)
        + "".join(f"; {k}: {d}" for k, d in class_shifts(t).items())
    )
    mean = qs.gt_mean(conv)
    for i in np.argsort(-mean):
        s = qs.seed_scores(conv)[:, i]
        lines.append(f"    {cands[i]:<24} {family_of(cands[i]):<7} {s.mean():.3f} ± {s.std():.3f}")
    seeds_seen = sorted({r.seed for r in t.runs if r.norm or r.ft or r.logme})
    lines.append(
        f"  BASELINES AND STRATEGIES {t.task} (proxy seeds with data: {seeds_seen or 'none'}; means over proxy seeds "
        "of each seed's ranking" + ("; IN SAMPLE: the tuning task" if t.task == tuning else "") + ")"
    )
    lines.append(
        f"  {'order':<42} {'seeds':>5} {'τw [95% CI]':<21} {'regret [95% CI]':<22} {'/ sd':>5} {'in tied':>7} "
        f"{'self τw':>7} {'flag':>4} {'× FT':>6}"
    )
    r = bs.random_pick(mean, t.group)
    lines.append(
        f"  {'random pick (expected)':<42} {'-':>5} {f2(r['wtau']):<21} {r['regret']:<22.3f} {r['regret'] / t.sd:5.1f} "
        f"{r['in_group']:7.2f} {'':>7} {'':>4} {0:6.3f}"
    )
    chosen = dec.get("chosen")
    marks = {chosen: " ← CHOSEN"} if chosen else {}
    if dec.get("norm_only_alone"):
        marks[dec["norm_only_alone"]] = marks.get(dec["norm_only_alone"], "") + " ← norm-only alone"
    if chosen and chosen in t.rows:
        eq = equal_cost_ft(t, t.rows[chosen]["cost"])
        if eq:
            marks[eq] = marks.get(eq, "") + " ← short FT at equal cost"
    for label, m in t.rows.items():
        ci = t.intervals(label)
        lines.append(
            f"  {label:<42} {m['seeds']:>5} {f2(m['wtau']):>5} [{f2(ci['wtau'][0])}, {f2(ci['wtau'][1])}]".ljust(72)
            + f" {m['regret']:.3f} [{ci['regret'][0]:.3f}, {ci['regret'][1]:.3f}]".ljust(23)
            + f" {f2(m['regret_sd'], '.1f'):>5} {m['in_group']:7.2f} {f2(m['self_wtau']):>7} {m['flagged']:4.1f} "
            f"{m['cost']:6.3f}{marks.get(label, '')}"
        )
    lines.append(
        "    regret: GT best minus the pick (/ sd: in GT seed s.d.); in tied: share of picks in the tied top group; "
        "self τw: the proxy's seed-to-seed agreement; flag: candidates inside the controls' noise floor; × FT: CPU "
        "s / fine-tuning every candidate to convergence, loading and preprocessing included"
    )
    lines += topk_lines(t, marks)
    lines.append(f"  WITHIN EACH FAMILY {t.task} (τw / regret in seed s.d.; n/a: no order)")
    fams = [f for f in ("unet3d", "nnunet") if sum(family_of(c) == f for c in cands) >= 2]
    cells = []
    for f in fams:
        sub = conv[:, [i for i, c in enumerate(cands) if family_of(c) == f], :]
        cells.append(f"{f2(qs.ceiling(sub))} (sd {bs.seed_sd(sub):.3f})".rjust(22))
    lines.append(f"  {'order':<42} " + " ".join(f"{f:>22}" for f in fams))
    lines.append(f"  {'ceiling':<42} " + " ".join(cells))
    for label in ["random pick", *t.rows]:
        cells = []
        for f in fams:
            m = t.within(label, f)
            cells.append(f"{f2(m['wtau'])} / {f2(m['regret_sd'], '.1f')}".rjust(22))
        lines.append(f"  {label:<42} " + " ".join(cells))
    return lines


TOP_K = (2, 3)


def topk_lines(t: TaskTables, marks: Mapping[str, str]) -> list[str]:
    """Post hoc, not a registered measure: the regret of fine-tuning each ranking's top k and keeping the best, in
    GT seed s.d. (mean over proxy seeds), for the baselines and the marked settings: what a user loses who buys
    k fine-tunings on the ranking's word (k of the task's candidates' fine-tuning cost on top of the ranking's)."""
    mean = qs.gt_mean(t.conv)
    labels = [k for k in ("architecture prior", "LogME b8") if k in t.rows] + [k for k in t.rows if k in marks]
    cells = []
    for label in labels:
        loss = [[bs.topk_regret(o, mean, k) for o in t.orders[label]] for k in TOP_K]
        cells.append(f"{label} " + " / ".join(f"{np.mean(x) / t.sd:.1f}" for x in loss))
    head = " / ".join(f"top {k}" for k in TOP_K)
    return [f"  POST HOC (not registered): regret of the best of the top k, {head}, in seed s.d.: {'; '.join(cells)}"]


def class_shifts(t: TaskTables) -> dict[str, str]:
    """For each machine class but the reference one, how its ground-truth runs differ from the reference class's
    runs of the same candidate (mean and s.d. of the per-run difference of test Dice), so a precision or CPU that
    moves the truth is seen rather than averaged in."""
    scores, classes = qs.seed_scores(t.conv), t.run_classes
    out = {}
    for k in sorted(t.classes):
        if k == t.ref:
            continue
        deltas = []
        for s, c in zip(*np.nonzero(classes == k), strict=True):
            ref = scores[classes[:, c] == t.ref, c]
            if ref.size:
                deltas.append(scores[s, c] - ref.mean())
        if deltas:
            d = np.asarray(deltas)
            out[k] = f"Δ test Dice vs the same candidates there {d.mean():+.4f} (s.d. {d.std():.4f}, n {d.size})"
    return out


def decision_lines(dec: dict[str, Any]) -> list[str]:
    if dec["status"] != "chosen":
        return [f"DECISION RULE (tuning task): {dec['status']} — {dec['why']}"]
    return [
        f"DECISION RULE (tuning task): chosen {dec['chosen']} — regret {dec['regret_sd']:.2f} seed s.d. (lowest "
        f"{dec['lowest_regret_sd']:.2f}), τw {f2(dec['wtau'])}, cost {dec['cost']:.3f} of fine-tuning all; "
        f"{dec['eligible']} of {dec['considered']} settings within the cost cap; tied within "
        f"{st.REGRET_TIE_SD} s.d.: {', '.join(dec['tied'])}; norm-only alone: {dec['norm_only_alone']}"
    ]


def verdict(met: bool, by: float, spec: str = ".2f") -> str:
    """ "met", or "MISSED by" how much (NaN compares as missed: no order is no evidence)."""
    return "met" if met else f"MISSED by {by:{spec}}" if math.isfinite(by) else "MISSED (no value)"


def target_lines(tables: Sequence[TaskTables], dec: dict[str, Any]) -> list[str]:
    """Issue 18's targets for the chosen setting on every complete evaluation task."""
    out = ["TARGETS (issue 18) for the chosen setting, per evaluation task"]
    if dec["status"] != "chosen":
        return [*out, "  pending: no setting chosen yet"]
    c = dec["chosen"]
    for t in tables:
        if not t.ok or c not in t.rows:
            out.append(f"  {t.task}: no result yet")
            continue
        m = t.rows[c]
        mark = "" if t.state["complete"] else " (INCOMPLETE)"
        base = {
            "architecture prior": t.rows.get("architecture prior"),
            "LogME b8": t.rows.get("LogME b8"),
            "norm-only alone": t.rows.get(dec["norm_only_alone"] or ""),
            "short FT at equal cost": t.rows.get(equal_cost_ft(t, m["cost"]) or ""),
        }
        worse = [k for k, b in base.items() if b is not None and m["regret"] > b["regret"] + 1e-12]
        best_free = max(
            (b["wtau"] for k, b in base.items() if k in ("architecture prior", "LogME b8") and b), default=math.nan
        )
        ceil = qs.ceiling(t.conv)
        within = []
        for f in ("unet3d", "nnunet"):
            sub = t.conv[:, [i for i, x in enumerate(t.cands) if family_of(x) == f], :]
            if sub.shape[1] >= 2 and qs.ceiling(sub) >= 0.6:
                w = t.within(c, f)["wtau"]
                within.append(f"{f} {f2(w)} ({verdict(w >= 0.6, 0.6 - w)})")
        out.append(
            f"  {t.task}{mark}: regret {m['regret']:.3f} ≤ every baseline: "
            + ("met" if not worse else f"MISSED (above {', '.join(worse)})")
            + f"; pick in tied group {m['in_group']:.2f} ({verdict(m['in_group'] >= 1, 1 - m['in_group'])}); "
            f"τw {f2(m['wtau'])} ≥ max(prior, LogME) + 0.05 = {f2(best_free + 0.05)} "
            f"({verdict(m['wtau'] >= best_free + 0.05, best_free + 0.05 - m['wtau'])}); ≥ ceiling − 0.1 = "
            f"{f2(ceil - 0.1)} ({verdict(m['wtau'] >= ceil - 0.1, ceil - 0.1 - m['wtau'])}); within-family "
            f"(ceiling ≥ 0.6): {'; '.join(within) or 'none'}; cost {m['cost']:.3f} ≤ {st.COST_CAP} "
            f"({verdict(m['cost'] <= st.COST_CAP, m['cost'] - st.COST_CAP, '.3f')})"
        )
    out.append("  'no fine-tune them all below the cap' is the engine's output, not in these JSON (tests/engine)")
    return out


def report(boot: int = 1000) -> tuple[str, dict[str, Any]]:
    doc = prereg()
    tuning = doc["tuning_task"]
    out = [f"BENCHMARK v2 (pre-registration {doc['created']}); raw results under {RESULTS}"]
    out += [check_weights(), code_line()]
    aliases = same_classes()  # read once: every task's tables join the same machine classes
    t_tuning = TaskTables(tuning, None, boot, aliases)
    tuning_mean = None
    if t_tuning.ok:
        tuning_mean = dict(zip(t_tuning.cands, qs.gt_mean(t_tuning.conv), strict=True))
        t_tuning = TaskTables(tuning, tuning_mean, boot, aliases)  # the prior-based strategies, in sample here
    dec = decision(t_tuning)
    out += decision_lines(dec)
    evaluation = [TaskTables(task, tuning_mean, boot, aliases) for task in doc["evaluation_tasks"]]
    for t in (t_tuning, *evaluation):
        out += ["", *task_lines(t, tuning, dec)]
    out += ["", *target_lines(evaluation, dec)]
    return "\n".join(out), dec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--decision", type=Path, help="also write the decision rule's outcome here (JSON)")
    args = p.parse_args(argv)
    try:
        text, dec = report(args.bootstrap)
    except MixedWeights as exc:
        print(exc.code, file=sys.stderr)
        return 2
    print(text)
    if args.decision:
        rq.dump(args.decision, dec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
