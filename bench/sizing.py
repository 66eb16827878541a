"""Worker sizing: candidates ranked per hour on this machine, for ways of splitting its cores.

A worker host runs ``concurrency`` tasks at once with ``threads`` torch threads each. This runs the demo
ranking task (4 candidates, the engine's default budget) as ``concurrency`` parallel `bnrank rank`
processes with ``--threads threads`` each, every configuration on the same candidates, and reports the
wall time, seconds per candidate and per training step, and candidates per hour. One configuration that
oversubscribes the cores (concurrency × threads > cores) is included on purpose: it is what a worker
with torch's default threads does when several tasks run at once.

    .venv/bin/python bench/sizing.py            # about 4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BNRANK = [sys.executable, "-m", "bnrank.cli"]


def demo_data(folder: Path) -> tuple[Path, list[Path]]:
    dataset = folder / "Dataset501_MNIBrain"
    if not dataset.is_dir():
        subprocess.run([*BNRANK, "demo-data", "--out", str(folder)], check=True, capture_output=True)
    return dataset, sorted((folder / "candidates").glob("*.safetensors"))


def run(dataset: Path, candidates: list[Path], concurrency: int, threads: int, work: Path) -> dict:
    groups = [candidates[i::concurrency] for i in range(concurrency)]
    started = time.perf_counter()
    procs = []
    for i, group in enumerate(groups):
        out = work / f"c{concurrency}t{threads}_{i}.json"
        command = [*BNRANK, "rank", "--dataset", str(dataset), "--threads", str(threads), "--no-control"]
        command += ["--quiet", "--json", str(out), *map(str, group)]
        procs.append((subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out))
    entries = []
    for proc, out in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(err.decode()[-2000:])
        entries += json.loads(out.read_text())["entries"]
    wall = time.perf_counter() - started
    seconds = [e["seconds"] for e in entries]
    steps = sum(e["steps"] for e in entries)
    return {
        "concurrency": concurrency,
        "threads": threads,
        "wall_s": wall,
        "per_candidate_s": sum(seconds) / len(seconds),
        "per_step_ms": 1000 * sum(seconds) / steps,
        "per_hour": 3600 * len(entries) / wall,
        "steps": entries[0]["steps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="demo folder (default: a temporary one)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.data) if args.data else Path(tmp) / "demo"
        dataset, candidates = demo_data(folder)
        configs = [(1, cores), (cores, 1), (cores, cores)]  # the last oversubscribes
        # Warm the preprocessing cache so no configuration pays for it.
        subprocess.run(
            [
                *BNRANK,
                "rank",
                "--dataset",
                str(dataset),
                "--max-steps",
                "1",
                "--no-control",
                "--quiet",
                str(candidates[0]),
            ],
            check=True,
            capture_output=True,
        )
        rows = [run(dataset, candidates, c, t, Path(tmp)) for c, t in configs]
    print(
        f"demo task, {len(candidates)} candidates, default budget ({rows[0]['steps']} steps each); {cores} cores, CPU"
    )
    print(f"{'tasks × threads':<16} {'wall s':>8} {'s/candidate':>12} {'ms/step':>9} {'candidates/h':>13}")
    for r in rows:
        label = f"{r['concurrency']} × {r['threads']}" + (" (over)" if r["concurrency"] * r["threads"] > cores else "")
        times = f"{r['wall_s']:>8.1f} {r['per_candidate_s']:>12.1f} {r['per_step_ms']:>9.0f}"
        print(f"{label:<16} {times} {r['per_hour']:>13.0f}")


if __name__ == "__main__":
    main()
