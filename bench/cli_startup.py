"""How long `bnrank --help` and `bnrank remote --help` take to start, and whether they load torch.

Each run is a fresh interpreter running the CLI as the installed `bnrank` script does, timed from the
parent (interpreter start included: what a user waits for). With `--baseline DIR` (a checkout of another
commit, e.g. `git archive <commit> | tar -x -C DIR`) the same commands of both trees run interleaved in one
run, so a busy machine slows both alike and the ratio stays fair.

    PYTHONPATH=. .venv/bin/python bench/cli_startup.py                           # this tree, 9 runs each
    PYTHONPATH=. .venv/bin/python bench/cli_startup.py --baseline /tmp/base --baseline-commit C  # side by side
    PYTHONPATH=. .venv/bin/python bench/cli_startup.py --from FILE              # the table of a committed run

Each run's raw timings are written to bench/results/cli_startup/<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "cli_startup"
COMMANDS = (("--help",), ("remote", "--help"))
HEAVY = ("torch", "monai", "sqlalchemy", "fastapi", "celery")
MARK = "CLI-STARTUP "
PROBE = f"""
import atexit, json, sys
def _report():
    import bnrank
    loaded = {{m: m in sys.modules for m in {HEAVY!r}}}
    sys.__stderr__.write("\\n{MARK}" + json.dumps({{"loaded": loaded, "bnrank": bnrank.__file__}}) + "\\n")
atexit.register(_report)
sys.argv = ["bnrank", *sys.argv[1:]]
from bnrank.cli import main
sys.exit(main())
"""


def run_once(tree: Path, args: tuple[str, ...]) -> dict[str, Any]:
    """One start of the CLI from ``tree``: wall seconds, exit code, which heavy packages it imported."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    line = next((s for s in done.stderr.splitlines() if s.startswith(MARK)), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"bnrank {' '.join(args)} from {tree} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    found = json.loads(line[len(MARK) :])
    if not Path(found["bnrank"]).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"{tree}: imported bnrank from {found['bnrank']}, not from the tree measured")
    return {"seconds": round(seconds, 4), "loaded": found["loaded"]}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [r["seconds"] for r in runs]
    loaded = [m for m in HEAVY if any(r["loaded"][m] for r in runs)]
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "loaded": loaded}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'tree':10s} {'command':22s} {'runs':>4s} {'median':>8s} {'min':>7s} {'max':>7s}  {'torch':5s}  loaded"]
    for r in rows:
        s = r["summary"]
        lines.append(
            f"{r['tree']:10s} {r['command']:22s} {len(r['runs']):4d} {s['median']:7.2f}s {s['min']:6.2f}s "
            f"{s['max']:6.2f}s  {'yes' if 'torch' in s['loaded'] else 'no':5s}  {', '.join(s['loaded']) or '-'}"
        )
    by = {(r["tree"], r["command"]): r["summary"]["median"] for r in rows}
    for command in [r["command"] for r in rows if r["tree"] == "baseline"]:
        if ("this", command) in by:
            lines.append(
                f"{command}: this tree starts in {by[('this', command)] / by[('baseline', command)]:.2f}× "
                "the baseline's median time"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="starts per tree and command (the median is reported)")
    parser.add_argument("--baseline", type=Path, help="another checkout to measure beside this one")
    parser.add_argument("--baseline-commit", help="the commit the baseline checkout holds, kept in the raw JSON")
    parser.add_argument("--from", dest="source", type=Path, help="print the table of a committed run; run nothing")
    args = parser.parse_args()
    if args.source:
        print(table(json.loads(args.source.read_text())["rows"]))
        return
    trees = [("this", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(t, " ".join(c)): [] for t, _ in trees for c in COMMANDS}
    for _, tree in trees:  # one untimed start each: compiled bytecode and the page cache warmed alike
        for command in COMMANDS:
            run_once(tree, command)
    for _ in range(args.runs):
        for command in COMMANDS:
            for tree_name, tree in trees:
                runs[(tree_name, " ".join(command))].append(run_once(tree, command))
    rows = [{"tree": t, "command": f"bnrank {c}", "runs": r, "summary": summarise(r)} for (t, c), r in runs.items()]
    print(table(rows))
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{stamp}.json"
    meta = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "baseline": str(args.baseline) if args.baseline else None,
        "baseline_commit": args.baseline_commit,
    }
    out.write_text(json.dumps({"when": stamp, **meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")


if __name__ == "__main__":
    main()
