"""`bnrank serve`, `worker`, `keys`, `demo` and `remote ...` (registered into the main parser by bnrank.cli)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the service-side subcommands."""
