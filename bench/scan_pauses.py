"""Which committed benchmark runs were stopped mid-run? Lists every validation curve with a paused stretch.

A benchmark process stopped with SIGSTOP (to free the cores for CI) keeps a running wall clock, so a cost read
as a share of the run's wall time gives the stopped stretch CPU it never used. v2's report reads costs with
:func:`quality_stats.cpu_at`, which discounts such stretches; v1's tables share CPU by wall time. This scan says
which files either reading touches and by how much the clock ran while the process was stopped.

    python bench/scan_pauses.py bench/results/proxies bench/results/proxy_variants
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_stats as qs


def curves(doc: Any, where: str = "") -> Iterator[tuple[str, list[dict[str, float]]]]:
    """(JSON path, curve) for every timed validation curve in a result document, at any depth."""
    if isinstance(doc, dict):
        curve = doc.get("curve")
        if isinstance(curve, list) and curve and isinstance(curve[0], dict) and "seconds" in curve[0]:
            yield where or "/", curve
        for key, value in doc.items():
            yield from curves(value, f"{where}/{key}")
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from curves(value, f"{where}[{i}]")


def scan(roots: list[Path]) -> tuple[int, list[dict[str, Any]]]:
    """The number of curves read, and one row per curve with a paused stretch."""
    seen, rows = 0, []
    for root in roots:
        for path in sorted(root.rglob("*.json")) if root.is_dir() else [root]:
            for where, curve in curves(json.loads(path.read_text())):
                seen += 1
                if paused := qs.paused_stretches(curve):
                    rows.append(
                        {
                            "file": str(path),
                            "entry": where,
                            "median_stretch": round(float(np.median(qs.stretches(curve))), 2),
                            "paused": [(step, round(x, 1)) for step, x in paused],
                            "run_seconds": round(float(curve[-1]["seconds"]), 1),
                        }
                    )
    return seen, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", type=Path, help="result files or folders")
    args = p.parse_args(argv)
    seen, rows = scan(args.roots)
    print(f"{seen} timed curves; {len(rows)} with a stretch over {qs.PAUSED:g}x the run's median")
    for r in rows:
        stops = ", ".join(f"{x} s to step {step}" for step, x in r["paused"])
        print(f"  {r['file']} {r['entry']}: median {r['median_stretch']} s; {stops} (run {r['run_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
