"""Engine speed: BN-only vs full-training steps, and preprocessing first run vs cached run.

Each training configuration runs in its own subprocess so its peak memory (ru_maxrss) is its own.
Targets (issue "ranking engine"): BN-only step <= 0.65 x the full step; a cached second preprocessing run
spends < 5 % of the first run's time.

    .venv/bin/python bench/engine_speed.py            # about two minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def step_worker(mode: str, precision: str, width: int, patch: int, batch: int, steps: int) -> dict:
    """Runs inside the subprocess: time `steps` optimiser steps after two warm-up steps."""
    import torch
    from monai.losses import DiceCELoss

    from bnrank.engine.architectures import build_model, get_architecture
    from bnrank.engine.bn_only import bn_only_parameters
    from bnrank.engine.threads import configure_threads

    threads = configure_threads()
    torch.manual_seed(0)
    model = build_model("unet3d", in_channels=1, out_channels=4, width=width).train()
    params = list(model.parameters()) if mode == "full" else bn_only_parameters(model, get_architecture("unet3d"))
    optimiser = torch.optim.Adam(params, lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.randn(batch, 1, patch, patch, patch)
    y = torch.randint(0, 4, (batch, 1, patch, patch, patch))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    times.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "median_ms": 1000 * times[len(times) // 2],
        "peak_growth_mb": (peak - base_rss) / 1024,
        "trainable": sum(p.numel() for p in params),
        "threads": threads,
    }


def run_step(mode: str, precision: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        mode,
        precision,
        str(args.width),
        str(args.patch),
        str(args.batch),
        str(args.steps),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_preprocessing(n_cases: int) -> tuple[float, float]:
    from bnrank.engine.data import PreprocessConfig, open_dataset, preprocess
    from bnrank.engine.demo_volumes import write_demo_task

    with tempfile.TemporaryDirectory() as tmp:
        root = write_demo_task(Path(tmp) / "data", n_cases=n_cases, spacing_mm=2.0, seed=0)
        config = PreprocessConfig(spacing=(1.5, 1.5, 1.5))
        timings = []
        for _ in range(2):
            t0 = time.perf_counter()
            pre = preprocess(open_dataset(root, check=False), config, cache_root=Path(tmp) / "cache")
            timings.append(time.perf_counter() - t0)
        assert pre.from_cache
        return timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16, help="unet3d base width (32 = Models Genesis)")
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cases", type=int, default=8, help="demo subjects for the preprocessing benchmark")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, precision, width, patch, batch, steps = args.worker
        print(json.dumps(step_worker(mode, precision, int(width), int(patch), int(batch), int(steps))))
        return

    print(
        f"# bench/engine_speed.py: unet3d width {args.width}, patch {args.patch}^3, batch {args.batch}, "
        f"median of {args.steps} steps, CPU"
    )
    print(f"{'precision':<10} {'mode':<8} {'step ms':>9} {'ratio':>7} {'peak +MB':>9} {'trainable':>11}")
    for precision in ("fp32", "bf16"):
        full = run_step("full", precision, args)
        bn = run_step("bn-only", precision, args)
        for mode, r in (("full", full), ("bn-only", bn)):
            ratio = r["median_ms"] / full["median_ms"]
            print(
                f"{precision:<10} {mode:<8} {r['median_ms']:9.1f} {ratio:7.2f} {r['peak_growth_mb']:9.1f} "
                f"{r['trainable']:11,}"
            )
    first, cached = bench_preprocessing(args.cases)
    print(
        f"\npreprocessing {args.cases} demo subjects (2 mm -> 1.5 mm): first run {first:.2f}s, "
        f"cached run {cached:.3f}s ({cached / first:.1%} of the first)"
    )


if __name__ == "__main__":
    main()
