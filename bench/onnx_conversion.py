"""ONNX checkpoints: conversion cost against loading a state dict, scores against the original weights, and what
hostile graphs cost the process that refuses them.

1. **Cost**: a 30 M-parameter Models Genesis unet3d (width 40) saved as .safetensors and exported to ONNX with its
   BatchNorm kept; `load_checkpoint` of each in a fresh process (one thread), median of ``--repeats`` runs: wall
   time, and peak memory as VmHWM (whole process) and above the process's resident size once torch and BNRank
   are imported (what loading itself added). Target: ONNX ≤ 2× the state dict in time and peak memory.
2. **Scores**: each registered architecture (at the narrow widths the tests use) and an nnU-Net PlainConvUNet,
   seeded, ranked on the demo task (MNI brain, 12 subjects, the ranking defaults) from its .safetensors weights
   and from its ONNX export; then a BatchNorm-folded inference export (eval mode, the exporter's default).
   Target: |ONNX − original| ≤ 0.02; the folded export ranks or is refused with the reason.
4. **Folded exports**: networks whose BatchNorms carry trained-like γ/β and running statistics, scored from their
   weights, their unfolded export, and their folded (eval-mode) export three ways: as BNRank takes it (refused),
   with an identity per-channel affine after each convolution that feeds an activation, and with a BatchNorm
   without affine there (batch statistics again); the last two are patched into the converter for the run.
3. **Hostile graphs**: an unknown operator, external data pointing outside the file, a 10¹²-element initializer,
   a custom operator domain; each read in a fresh process: refused, and the peak memory it cost.

    PYTHONPATH=. .venv/bin/python bench/onnx_conversion.py            # ~10 min on 2 busy cores
    PYTHONPATH=. .venv/bin/python bench/onnx_conversion.py --from FILE  # the tables again from a committed run

Raw rows go to bench/results/onnx_conversion/<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_STATUS = (
    "{k: int(l.split()[1]) / 1024 for l in open('/proc/self/status') for k in ('VmHWM', 'VmRSS') if l.startswith(k)}"
)
LOAD = f"""
import json, sys, time, torch
torch.set_num_threads(1)
from bnrank.engine.fitting import load_checkpoint
import onnx  # imported by the ONNX path; counted in the baseline of both
base = {_STATUS}
start = time.perf_counter()
model, report = load_checkpoint(sys.argv[1])
took = time.perf_counter() - start
peak = {_STATUS}
n = sum(p.numel() for p in model.parameters()) / 1e6
print(json.dumps({{"format": report.format, "params_m": round(n, 2), "seconds": round(took, 3),
                  "peak_mib": round(peak["VmHWM"]), "added_mib": round(peak["VmHWM"] - base["VmRSS"])}}))
"""
HOSTILE = f"""
import json, sys, time
from bnrank.engine.checkpoints import read_state_dict
import onnx  # imported by the ONNX path: in the baseline, so the time is the refusal's own
base = {_STATUS}
start = time.perf_counter()
try:
    read_state_dict(sys.argv[1])
    outcome = "ACCEPTED"
except Exception as exc:
    outcome = type(exc).__name__ + ": " + str(exc)[:150]
took = time.perf_counter() - start
peak = {_STATUS}
print(json.dumps({{"outcome": outcome, "seconds": round(took, 3), "added_mib": round(peak["VmHWM"] - base["VmRSS"])}}))
"""
NETWORKS = ["unet3d", "medicalnet_resnet10", "medicalnet_resnet18", "monai_unet", "monai_basicunet", "nnunet"]
FOLDED = ["unet3d", "monai_basicunet"]


def _run(script: str, path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_cost(root: Path, repeats: int) -> list[dict[str, Any]]:
    import torch

    from bnrank.engine.architectures import build_model
    from bnrank.engine.checkpoints import save_weights
    from tests.engine.formats import onnx_makers as om

    torch.manual_seed(0)
    model = build_model("unet3d", width=40, in_channels=1, out_channels=2)
    files = {
        "safetensors": save_weights(model, root / "unet3d_w40.safetensors"),
        "onnx": om.export(model, root / "unet3d_w40.onnx", size=32),
    }
    rows = []
    for name, path in files.items():
        runs = [_run(LOAD, path) for _ in range(repeats)]
        rows.append(
            {
                "file": name,
                "bytes": path.stat().st_size,
                "params_m": runs[0]["params_m"],
                "seconds": statistics.median(r["seconds"] for r in runs),
                "peak_mib": statistics.median(r["peak_mib"] for r in runs),
                "added_mib": statistics.median(r["added_mib"] for r in runs),
                "runs": runs,
            }
        )
    return rows


def bench_scores(root: Path, networks: list[str]) -> list[dict[str, Any]]:
    import torch

    from bnrank.engine.checkpoints import save_weights
    from bnrank.engine.configs.ranking import ranking_config
    from bnrank.engine.data import PreprocessConfig, open_dataset, preprocess
    from bnrank.engine.demo_volumes import write_demo_task
    from bnrank.engine.ranking import Candidate, evaluate_candidate
    from bnrank.engine.task import make_task
    from tests.engine.formats import makers as mk
    from tests.engine.formats import onnx_makers as om

    torch.set_num_threads(2)
    dataset = write_demo_task(root / "data", n_cases=12, seed=0)
    task = make_task(preprocess(open_dataset(dataset), PreprocessConfig(), cache_root=root / "cache"), seed=0)
    config = ranking_config(precision="fp32")
    rows = []
    for name in networks:
        if name == "nnunet":  # its weights mean something only with its plans: the model folder nnU-Net writes
            weights, model = mk.write_nnunet_folder(root / "nnunet_results", seed=1)
        else:
            model = om.network(name, seed=1)
            weights = save_weights(model, root / f"{name}.safetensors")
        exported = om.export(model, root / f"{name}.onnx", size=32)
        row: dict[str, Any] = {"network": name}
        for label, path in (("original", weights), ("onnx", exported)):
            entry = evaluate_candidate(Candidate(label, path), task, config)
            row[label] = entry.score if entry.status == "ok" else None
            row[f"{label}_error"] = entry.error
            row[f"{label}_seconds"] = entry.seconds
        rows.append(row)
        print(f"  {name}: original {row['original']}, onnx {row['onnx']}", flush=True)
    folded = om.export(om.network("unet3d", seed=1), root / "folded.onnx", keep_norms=False, size=32)
    entry = evaluate_candidate(Candidate("folded", folded), task, config)
    rows.append(
        {
            "network": "unet3d, folded inference export",
            "original": None,
            "onnx": entry.score if entry.status == "ok" else None,
            "onnx_error": entry.error,
        }
    )
    return rows


_ACTIVATIONS = {"Relu", "LeakyRelu", "Elu", "PRelu", "Sigmoid", "Tanh", "Clip"}


def _carrying_network(name: str) -> Any:
    """A seeded network whose BatchNorms carry something to fold: γ in [0.5, 1.5], β ~ N(0, 0.2²), running
    statistics averaged over four train-mode passes (a fresh network's γ = 1, β = 0, mean 0, var 1 fold into
    the identity, which would make a folded export look like its original for free)."""
    import torch
    from torch import nn

    from tests.engine.formats import onnx_makers as om

    model = om.network(name, seed=1)
    g = torch.Generator().manual_seed(5)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.empty_like(m.weight).uniform_(0.5, 1.5, generator=g))
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            m.momentum = None
        model.train()
        for _ in range(4):
            model(torch.randn(2, 1, 32, 32, 32, generator=g))
        for m in bns:
            m.momentum = 0.1
    return model


def _with_folded_norms(how: str) -> Any:
    """Patch the converter for one evaluation: after every convolution that feeds an activation (where an
    export folded a BatchNorm) and is not the head, insert ``affine`` (a per-channel scale and shift, identity-
    initialised: γ/β on the folded features) or ``batchnorm`` (a BatchNorm without affine: batch statistics
    again, and the identity affine norm-only evaluation inserts after any such norm). Returns the undo."""
    from torch import nn

    from bnrank.engine import bn_only
    from bnrank.engine.formats import onnx_network as on

    class ChannelAffine(nn.BatchNorm3d):  # a BatchNorm subclass so the engine finds and trains its γ/β
        def __init__(self, channels: int) -> None:
            super().__init__(channels, affine=True, track_running_stats=False)

        def forward(self, x: Any) -> Any:
            return x * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)

    reinit, run = bn_only.reinit_head, on.OnnxNetwork._run

    def reinit_and_insert(model: Any, arch: Any, seed: int) -> None:
        reinit(model, arch, seed)
        if not isinstance(model, on.OnnxNetwork):
            return
        consumers: dict[str, set[str]] = {}
        for step in model.spec.steps:
            for name in step.inputs[:1]:
                consumers.setdefault(name, set()).add(step.op)
        model.folded = nn.ModuleDict()
        for step in model.spec.steps:
            if (
                step.op in ("Conv", "ConvTranspose")
                and step.key not in model.spec.head
                and consumers.get(step.outputs[0], set()) & _ACTIVATIONS
            ):
                channels = model.layers[step.key].out_channels
                model.folded[step.key] = (
                    ChannelAffine(channels) if how == "affine" else nn.BatchNorm3d(channels, affine=False)
                )

    def run_and_apply(self: Any, step: Any, args: Any) -> Any:
        y = run(self, step, args)
        folded = getattr(self, "folded", None)
        return folded[step.key](y) if folded is not None and step.key in folded else y

    bn_only.reinit_head, on.OnnxNetwork._run = reinit_and_insert, run_and_apply

    def undo() -> None:
        bn_only.reinit_head, on.OnnxNetwork._run = reinit, run

    return undo


def bench_folded(root: Path, networks: list[str]) -> list[dict[str, Any]]:
    """A BatchNorm-folded inference export three ways against its original weights and its unfolded export."""
    import torch

    from bnrank.engine.checkpoints import save_weights
    from bnrank.engine.configs.ranking import ranking_config
    from bnrank.engine.data import PreprocessConfig, open_dataset, preprocess
    from bnrank.engine.demo_volumes import write_demo_task
    from bnrank.engine.ranking import Candidate, evaluate_candidate
    from bnrank.engine.task import make_task
    from tests.engine.formats import onnx_makers as om

    torch.set_num_threads(2)
    dataset = write_demo_task(root / "fdata", n_cases=12, seed=0)
    task = make_task(preprocess(open_dataset(dataset), PreprocessConfig(), cache_root=root / "fcache"), seed=0)
    config = ranking_config(precision="fp32")
    rows = []
    for name in networks:
        model = _carrying_network(name)
        files = {
            "original": save_weights(model, root / f"{name}_carrying.safetensors"),
            "onnx": om.export(model, root / f"{name}_carrying.onnx", size=32),
            "folded": om.export(model, root / f"{name}_folded.onnx", keep_norms=False, size=32),
        }
        row: dict[str, Any] = {"network": name}
        for label, path, how in (
            ("original", files["original"], None),
            ("unfolded", files["onnx"], None),
            ("folded_refused", files["folded"], None),
            ("folded_affine", files["folded"], "affine"),
            ("folded_batchnorm", files["folded"], "batchnorm"),
        ):
            undo = _with_folded_norms(how) if how else None
            try:
                entry = evaluate_candidate(Candidate(label, path), task, config)
            finally:
                if undo:
                    undo()
            row[label] = entry.score if entry.status == "ok" else None
            row[f"{label}_error"] = entry.error
            row[f"{label}_kinds"] = entry.norm_kinds
        rows.append(row)
        print(
            f"  {name}: "
            + ", ".join(f"{k} {row[k]}" for k in ("original", "unfolded", "folded_affine", "folded_batchnorm")),
            flush=True,
        )
    return rows


def bench_hostile(root: Path) -> list[dict[str, Any]]:
    from tests.engine.formats import onnx_makers as om

    makers = {
        "unknown operator (Einsum)": om.unknown_operator,
        "external data (/etc/shadow)": lambda p: om.external_data(p, "/etc/shadow"),
        "10^12-element initializer": om.huge_initializer,
        "custom operator domain": om.custom_domain,
    }
    return [
        {"file": label, **_run(HOSTILE, make(root / f"hostile{i}.onnx"))}
        for i, (label, make) in enumerate(makers.items())
    ]


def print_tables(result: dict[str, Any]) -> None:
    if result["cost"]:
        print_cost(result)
    if result["scores"]:
        print_scores(result)
    if result["hostile"]:
        print_hostile(result)
    if result.get("folded"):
        print_folded(result)


def print_cost(result: dict[str, Any]) -> None:
    cost = {r["file"]: r for r in result["cost"]}
    st, ox = cost["safetensors"], cost["onnx"]
    print(f"\nConversion cost, unet3d width 40 ({st['params_m']} M parameters), median of {result['repeats']} runs")
    print(f"{'file':<12} {'MB':>7} {'load s':>8} {'peak MiB':>9} {'added MiB':>10}")
    for r in (st, ox):
        size, seconds, peak, added = r["bytes"] / 1e6, r["seconds"], r["peak_mib"], r["added_mib"]
        print(f"{r['file']:<12} {size:>7.1f} {seconds:>8.2f} {peak:>9.0f} {added:>10.0f}")
    print(
        f"{'ONNX / st':<12} {'':>7} {ox['seconds'] / st['seconds']:>7.2f}× {ox['peak_mib'] / st['peak_mib']:>8.2f}× "
        f"{ox['added_mib'] / max(st['added_mib'], 1):>9.2f}×   (target ≤ 2×)"
    )


def print_scores(result: dict[str, Any]) -> None:
    print("\nDemo task (MNI brain), ranking defaults: score of the original weights and of their ONNX export")
    print(f"{'network':<34} {'original':>9} {'onnx':>9} {'|Δ|':>7}")
    for r in result["scores"]:
        a, b = r.get("original"), r.get("onnx")
        delta = f"{abs(a - b):.4f}" if a is not None and b is not None else "–"
        fa = f"{a:.4f}" if a is not None else "–"
        fb = f"{b:.4f}" if b is not None else "refused"
        print(f"{r['network']:<34} {fa:>9} {fb:>9} {delta:>7}")
        if b is None and r.get("onnx_error"):
            print(f"    {r['onnx_error'][:300]}")


def print_folded(result: dict[str, Any]) -> None:
    print("\nBatchNorm-folded inference export (BatchNorms carrying γ/β and running statistics), demo task")
    print(f"{'network':<18} {'original':>9} {'unfolded':>9} {'+affine':>9} {'Δ':>7} {'+BN':>9} {'Δ':>7}  folded as is")

    def f(v: Any) -> str:
        return f"{v:.4f}" if v is not None else "–"

    for r in result["folded"]:

        def d(v: Any, base: Any = r["original"]) -> str:
            return f"{v - base:+.4f}" if v is not None and base is not None else "–"

        refused = "refused" if r["folded_refused"] is None else f(r["folded_refused"])
        print(
            f"{r['network']:<18} {f(r['original']):>9} {f(r['unfolded']):>9} {f(r['folded_affine']):>9} "
            f"{d(r['folded_affine']):>7} {f(r['folded_batchnorm']):>9} {d(r['folded_batchnorm']):>7}  {refused}"
        )


def print_hostile(result: dict[str, Any]) -> None:
    print("\nHostile ONNX files, each read in a fresh process")
    print(f"{'file':<30} {'s':>6} {'added MiB':>10}  outcome")
    for r in result["hostile"]:
        print(f"{r['file']:<30} {r['seconds']:>6.3f} {r['added_mib']:>10.0f}  {r['outcome'][:90]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-scores", action="store_true", help="only the cost and hostile tables")
    parser.add_argument("--merge", type=Path, help="take the cost and hostile rows from this saved run, run scores")
    parser.add_argument("--only-scores", action="store_true", help="only the scores table")
    parser.add_argument("--networks", nargs="*", default=NETWORKS, help="networks of the scores table")
    parser.add_argument("--folded", nargs="*", default=FOLDED, help="networks of the folded-export table")
    parser.add_argument("--from", dest="source", type=Path, help="print the tables of a saved run")
    args = parser.parse_args()
    if args.source:
        print_tables(json.loads(args.source.read_text()))
        return
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        earlier = json.loads(args.merge.read_text()) if args.merge else None
        result: dict[str, Any] = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{platform.machine()}, {platform.processor() or '?'}",
            "repeats": earlier["repeats"] if earlier else args.repeats,
            "cost": earlier["cost"] if earlier else [] if args.only_scores else bench_cost(root, args.repeats),
            "hostile": earlier["hostile"] if earlier else [] if args.only_scores else bench_hostile(root),
        }
        if earlier:
            result["cost_and_hostile_from"] = earlier["when"]
        result["scores"] = [] if args.skip_scores else bench_scores(root, args.networks)
        result["folded"] = [] if args.skip_scores else bench_folded(root, args.folded)
    part = "-scores" if args.only_scores else "-cost" if args.skip_scores else ""  # parts run side by side
    out = ROOT / "bench" / "results" / "onnx_conversion" / f"{result['when'].replace(':', '')}{part}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_tables(result)
    print(f"\nraw rows: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
