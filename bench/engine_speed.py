"""Engine speed: BN-only vs full-training steps, and preprocessing first run vs cached run.

Each training configuration runs in its own subprocess so its peak memory (ru_maxrss) is its own.
Targets (issue "ranking engine"): BN-only step <= 0.65 x the full step; a cached second preprocessing run
spends < 5 % of the first run's time.

    .venv/bin/python bench/engine_speed.py            # about two minutes on 2 cores
    .venv/bin/python bench/engine_speed.py --only batched      # K candidates one at a time vs stacked (vmap)
    .venv/bin/python bench/engine_speed.py --only validation   # one validation, and a run's validations, per mode
    .venv/bin/python bench/engine_speed.py --only norms        # norm-only vs full on InstanceNorm networks

The norms case (issue 11) times norm-only vs full fine-tuning steps on MONAI UNets with InstanceNorm, once
with the norm's own affine (as nnU-Net has it) and once without (MONAI's default: norm-only inserts identity
affines, which the timing includes). Full and norm-only steps alternate in one process, so load from other
work on a shared machine falls on both; peak memory comes from one process per mode. The numbers are also
written as JSON (``--json``, default bench/results/engine_speed/norms-<UTC time>.json).
"""

from __future__ import annotations

import argparse
import json
import os
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


# MONAI UNet as registered (monai_unet: channels 16-128, strides 2, 2 residual units), only the norm differs.
NORM_NETS = {
    "instance+affine": ("instance", {"affine": True}),
    "instance (no affine)": "instance",
}


def _norm_net(net: str, mode: str) -> tuple:
    """A MONAI UNet with ``net``'s norm, seeded, and what ``mode`` trains: every parameter, or norm-only's set."""
    import torch

    from bnrank.engine.architectures import architecture_from_network_def
    from bnrank.engine.bn_only import norm_only_setup

    torch.manual_seed(0)
    defn = {"_target_": "UNet", "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2}
    arch = architecture_from_network_def({**defn, "norm": NORM_NETS[net]})
    model = arch.build(in_channels=1, out_channels=4).train()
    if mode == "full":
        return model, list(model.parameters()), None
    params, _, _, info = norm_only_setup(model, arch, 0)
    return model, params, info


def _stepper(model, params, patch: int, batch: int):
    import torch
    from monai.losses import DiceCELoss

    optimiser = torch.optim.Adam(params, lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.randn(batch, 1, patch, patch, patch, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (batch, 1, patch, patch, patch), generator=torch.Generator().manual_seed(2))

    def step() -> float:
        t0 = time.perf_counter()
        loss = loss_fn(model(x).float(), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return 1000 * (time.perf_counter() - t0)

    return step


def norms_worker(net: str, mode: str, patch: int, batch: int, steps: int, threads: int = 0) -> dict:
    """Runs inside the subprocess: peak memory growth of ``steps`` full or norm-only steps (its own process)."""
    from bnrank.engine.threads import configure_threads

    threads = configure_threads(threads=threads)
    model, params, info = _norm_net(net, mode)
    step = _stepper(model, params, patch, batch)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(steps):
        step()
    return {
        "net": net,
        "mode": mode,
        "peak_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024,
        "trainable": sum(p.numel() for p in params),
        "parameters": sum(p.numel() for p in model.parameters()),
        "norm_kinds": info.kinds if info else None,
        "inserted_affines": len(info.inserted_affines) if info else None,
        "threads": threads,
    }


def norms_timing_worker(net: str, patch: int, batch: int, steps: int, threads: int = 0) -> dict:
    """Runs inside the subprocess: full and norm-only steps of the same network *alternately* (after two warm-up
    steps each), so other load on a shared machine falls on both alike; milliseconds of every step per mode."""
    from bnrank.engine.threads import configure_threads

    configure_threads(threads=threads)
    steppers = {mode: _stepper(*_norm_net(net, mode)[:2], patch, batch) for mode in ("full", "norm-only")}
    times: dict[str, list[float]] = {mode: [] for mode in steppers}
    for i in range(steps + 2):
        for mode, step in steppers.items():
            ms = step()
            if i >= 2:
                times[mode].append(round(ms, 1))
    return times


def bench_norms(args: argparse.Namespace) -> None:
    """Per network: step times from one subprocess alternating full and norm-only steps (the ratio is taken side by
    side), peak memory from one subprocess per mode (ru_maxrss is per process)."""

    def worker(*values: object) -> dict:
        cmd = [sys.executable, __file__, "--worker", *map(str, values)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        return json.loads(out.stdout.strip().splitlines()[-1])

    sizes = (args.patch, args.batch, args.steps, args.threads)
    rows = []
    for net in NORM_NETS:
        times = worker("norms-time", net, *sizes)
        for mode in ("full", "norm-only"):
            steps = sorted(times[mode])
            rows.append(
                {
                    **worker("norms", net, mode, *sizes),
                    "best_ms": steps[0],
                    "median_ms": steps[len(steps) // 2],
                    "step_ms": times[mode],
                }
            )
    print(
        f"\nMONAI UNet (channels 16-128, 2 residual units) with InstanceNorm, patch {args.patch}^3, batch "
        f"{args.batch}, fp32, {args.steps} alternating steps per mode, {rows[0]['threads']} thread(s)"
    )
    head = f"{'norm':<22} {'mode':<10} {'median ms':>9} {'best':>7} {'ratio':>6} {'peak +MB':>9} {'trainable':>11}"
    print(head + "  trained")
    for r in rows:
        full = next(f for f in rows if f["net"] == r["net"] and f["mode"] == "full")
        kinds = ",".join(r["norm_kinds"]) if r["norm_kinds"] else "everything"
        print(
            f"{r['net']:<22} {r['mode']:<10} {r['median_ms']:9.1f} {r['best_ms']:7.1f} "
            f"{r['median_ms'] / full['median_ms']:6.2f} {r['peak_growth_mb']:9.1f} {r['trainable']:11,}  {kinds}"
        )
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    path = Path(args.json) if args.json else ROOT / "bench" / "results" / "engine_speed" / f"norms-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "patch": args.patch,
        "batch": args.batch,
        "steps": args.steps,
        "precision": "fp32",
        "load_average": os.getloadavg(),
    }
    path.write_text(json.dumps({"measured": stamp, "config": config, "rows": rows}, indent=2))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def _bn_only_trainers(k: int, width: int, patch: int, batch: int, **config_kw) -> list:
    """K BN-only trainers of unet3d (different weights) on one small random task; validation only at the end."""
    import numpy as np

    from bnrank.engine.architectures import build_model, get_architecture
    from bnrank.engine.bn_only import bn_only_setup
    from bnrank.engine.configs.training import TrainConfig
    from bnrank.engine.training.patches import TaskData, Volume
    from bnrank.engine.training.trainer import Trainer

    rng = np.random.default_rng(0)
    side = 2 * patch
    vols = [
        Volume(f"c{i}", rng.normal(size=(1, side, side, side)).astype(np.float32), rng.integers(0, 3, (side,) * 3))
        for i in range(3)
    ]
    data = TaskData(vols[:2], vols[2:], ["background", "a", "b"])
    config = TrainConfig(
        **{
            "max_steps": 10_000,
            "val_every": 10_000,
            "validate_at": "scored",
            "score_window": 1,
            "patch_size": (patch,) * 3,
            "batch_size": batch,
            "precision": "fp32",
            **config_kw,
        }
    )
    trainers = []
    for i in range(k):
        torch_seed(i)
        model = build_model("unet3d", in_channels=1, out_channels=3, width=width)
        params, _, _ = bn_only_setup(model, get_architecture("unet3d"), config.seed)
        trainers.append(Trainer(model, params, data, config, label=f"c{i}"))
    return trainers


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def batched_worker(k: int, width: int, patch: int, batch: int, steps: int, threads: int = 0) -> dict:
    """Seconds per candidate-step: K candidates stepped one at a time vs together (torch.func vmap)."""
    from bnrank.engine.threads import configure_threads
    from bnrank.engine.training.batched import train_together

    threads = configure_threads(threads=threads)
    out = {"threads": threads}
    alone = _bn_only_trainers(k, width, patch, batch)
    for t in alone:
        t.run(2)  # warm-up
    t0 = time.perf_counter()
    for t in alone:
        t.run(2 + steps)
    out["alone_ms"] = 1000 * (time.perf_counter() - t0) / (k * steps)
    together = _bn_only_trainers(k, width, patch, batch)
    train_together(together, 2)
    t0 = time.perf_counter()
    train_together(together, 2 + steps)
    out["together_ms"] = 1000 * (time.perf_counter() - t0) / (k * steps)
    return out


def validation_worker(width: int, patch: int, batch: int, side: int, n_val: int, threads: int = 0) -> dict:
    """Milliseconds of one validation per mode, on n_val random cases of side³ voxels."""
    import numpy as np

    from bnrank.engine.architectures import build_model
    from bnrank.engine.configs.training import TrainConfig
    from bnrank.engine.threads import configure_threads
    from bnrank.engine.training.patches import TaskData, Volume
    from bnrank.engine.training.trainer import recalibrate_batchnorm, recalibration_batches
    from bnrank.engine.training.validation import Validator

    threads = configure_threads(threads=threads)
    rng = np.random.default_rng(0)
    vols = [
        Volume(f"c{i}", rng.normal(size=(1, side, side, side)).astype(np.float32), rng.integers(0, 3, (side,) * 3))
        for i in range(n_val + 1)
    ]
    data = TaskData(vols[:1], vols[1:], ["background", "a", "b"])
    model = build_model("unet3d", in_channels=1, out_channels=3, width=width)
    out = {"threads": threads}
    for mode in ("sliding_window", "whole", "patches"):
        config = TrainConfig(patch_size=(patch,) * 3, batch_size=batch, precision="fp32", validation=mode)
        validator = Validator(data, config)
        validator(model)  # warm-up
        t0 = time.perf_counter()
        validator(model)
        out[mode] = 1000 * (time.perf_counter() - t0)
    config = TrainConfig(patch_size=(patch,) * 3, batch_size=batch, precision="fp32", bn_recalibration=4)
    batches = recalibration_batches(data, config)
    t0 = time.perf_counter()
    recalibrate_batchnorm(model, batches, config)
    out["recalibration_4_batches"] = 1000 * (time.perf_counter() - t0)
    return out


def run_worker(kind: str, *values: object) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, *map(str, values)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_batched(args: argparse.Namespace) -> None:
    r = run_worker("batched", args.candidates, args.width, args.patch, args.batch, args.steps, args.threads)
    print(
        f"\n{args.candidates} unet3d candidates (width {args.width}, patch {args.patch}^3, batch {args.batch}), "
        f"BN-only fp32, {args.steps} steps, {r['threads']} thread(s): ms per candidate-step"
    )
    print(f"{'one at a time':<16} {r['alone_ms']:9.1f}")
    print(f"{'together (vmap)':<16} {r['together_ms']:9.1f}   {r['alone_ms'] / r['together_ms']:.2f}x speed-up")


def bench_validation(args: argparse.Namespace) -> None:
    r = run_worker("validation", args.width, args.patch, args.batch, args.val_side, args.val_cases, args.threads)
    print(
        f"\nvalidation of {args.val_cases} cases of {args.val_side}^3 (unet3d width {args.width}, patch "
        f"{args.patch}^3, 8 fixed patches), {r['threads']} thread(s)"
    )
    steps, every, window = 100, 10, 3
    today = steps // every * r["sliding_window"]
    print(f"{'mode':<16} {'one (ms)':>9} {'per run, every 10 of 100 steps':>32} {'per run, scored (3)':>21}")
    for mode in ("sliding_window", "whole", "patches"):
        one = r[mode]
        print(f"{mode:<16} {one:9.0f} {steps // every * one:32.0f} {window * one:21.0f}  ({window * one / today:.1%})")
    print(f"{'BN recalibration, 4 batches':<28} {r['recalibration_4_batches']:9.0f} ms per scored validation")


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
    parser.add_argument("--candidates", type=int, default=4, help="candidates for the batched case")
    parser.add_argument("--val-side", type=int, default=96, help="side of the validation cases")
    parser.add_argument("--val-cases", type=int, default=2, help="validation cases")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the new cases (0: the cores)")
    parser.add_argument("--only", choices=("steps", "batched", "validation", "norms"), help="run one case only")
    parser.add_argument("--json", help="norms case: write its numbers here (default under bench/results/engine_speed)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker and args.worker[0] == "norms":
        net, mode, *sizes = args.worker[1:]
        print(json.dumps(norms_worker(net, mode, *map(int, sizes))))
        return
    if args.worker and args.worker[0] == "norms-time":
        net, *sizes = args.worker[1:]
        print(json.dumps(norms_timing_worker(net, *map(int, sizes))))
        return
    if args.only == "norms":
        bench_norms(args)
        return
    if args.worker and args.worker[0] in ("batched", "validation"):
        fn = batched_worker if args.worker[0] == "batched" else validation_worker
        print(json.dumps(fn(*map(int, args.worker[1:]))))
        return
    if args.only == "batched":
        bench_batched(args)
        return
    if args.only == "validation":
        bench_validation(args)
        return
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
    if args.only is None:
        bench_validation(args)
        bench_batched(args)
        bench_norms(args)


if __name__ == "__main__":
    main()
