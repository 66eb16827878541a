"""Loading the shared formats at realistic sizes: time and peak memory per format, one process each.

nnU-Net v2 (a 3d_fullres PlainConvUNet, 6 stages of 32-320 features, 31 M parameters, saved with its
optimizer state as nnU-Net saves it) as a model-folder zip and as a bare checkpoint_final.pth; a MONAI
SegResNet bundle zip; a Models Genesis unet3d (full width) as a TorchScript archive, read by the
restricted unpickler, beside `torch.jit.load` of the same (trusted, self-made) file for comparison.
Peak memory is VmHWM of the loading process (reset at exec, unlike ru_maxrss, which a child inherits).

    PYTHONPATH=. .venv/bin/python bench/format_loading.py              # about a minute; files in a temp folder
    PYTHONPATH=. .venv/bin/python bench/format_loading.py --from FILE  # the table again from a committed run

Each run's raw rows are written to bench/results/format_loading/<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_PEAK = "next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024"
LOAD = f"""
import json, sys, time, torch
torch.set_num_threads(1)
from bnrank.engine.fitting import load_checkpoint
start = time.perf_counter()
model, report = load_checkpoint(sys.argv[1])
took = time.perf_counter() - start
n = sum(p.numel() for p in model.parameters()) / 1e6
print(json.dumps({{"format": report.format, "architecture": report.architecture, "params_m": round(n, 2),
                  "seconds": round(took, 3), "peak_mib": round({_PEAK})}}))
"""
JIT = f"""
import json, sys, time, torch
torch.set_num_threads(1)
start = time.perf_counter()
torch.jit.load(sys.argv[1])
took = time.perf_counter() - start
print(json.dumps({{"format": "torch.jit.load", "architecture": "(comparison only)", "params_m": None,
                  "seconds": round(took, 3), "peak_mib": round({_PEAK})}}))
"""


def write_files(root: Path) -> list[Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from bnrank.engine.architectures.nnunet import build_nnunet
    from tests.engine.formats import makers as mk

    plans = mk.plans(features=(32, 64, 128, 256, 320, 320))
    kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    kwargs["n_conv_per_stage"], kwargs["n_conv_per_stage_decoder"] = [2] * 6, [2] * 5
    model = build_nnunet(1, 3, network_class_name=mk.PLAIN, arch_kwargs=kwargs)
    folder = root / "results" / mk.TRAINER_FOLDER
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(mk.dataset_json()))
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(mk.nnunet_checkpoint(model, plans), checkpoint)
    segresnet = {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 16}
    return [
        mk.zip_folder(folder, root / "nnunet_model.zip"),
        checkpoint,
        mk.zip_folder(mk.write_bundle(root, segresnet), root / "segresnet_bundle.zip"),
        mk.write_torchscript(root / "genesis_traced.pt", width=32)[0],
    ]


RESULTS = Path(__file__).resolve().parent / "results" / "format_loading"


def measure(script: str, path: Path) -> dict[str, Any]:
    """One load in a fresh process (its own peak memory); the row it reports, with the file's name and size."""
    out = subprocess.run([sys.executable, "-c", script, str(path)], check=True, capture_output=True, text=True)
    return {"file": path.name, "size_mib": round(path.stat().st_size / 2**20, 1), **json.loads(out.stdout)}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'file':24s} {'size':>9s}  {'format':14s} {'architecture':24s} {'params':>7s} {'load':>8s} {'peak':>10s}"
    ]
    for r in rows:
        params = f"{r['params_m']:5.1f} M" if r["params_m"] is not None else ""
        lines.append(
            f"{r['file']:24s} {r['size_mib']:6.1f} MiB  {r['format']:14s} {r['architecture'][:24]:24s} "
            f"{params:>7s} {r['seconds']:6.2f} s {r['peak_mib']:6.0f} MiB"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", type=Path, help="print the table of a committed run; load nothing")
    args = parser.parse_args()
    if args.source:
        print(table(json.loads(args.source.read_text())["rows"]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_files(Path(tmp))
        rows = [measure(LOAD, path) for path in paths]
        rows.append(measure(JIT, paths[-1]))
    print(table(rows))
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{stamp}.json"
    meta = {"machine": platform.machine(), "python": platform.python_version(), "threads": 1}
    out.write_text(json.dumps({"when": stamp, **meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")


if __name__ == "__main__":
    main()
