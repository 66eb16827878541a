"""The bench scripts import each other by bare name (`import zoo`), as they do when run from `bench/`."""

import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parents[2] / "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
