"""`bnrank alchemy` and `bnrank probe` (registered into the main parser by bnrank.cli)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def register(sub: argparse._SubParsersAction, add_budget: Callable, make_config: Callable, load_task: Callable) -> None:
    """Add the alchemy and probe subcommands; the helpers are bnrank.cli's shared option/dataset code."""
