"""The `bnrank` command line: run the engine locally, no server needed, or run and talk to the service.

The package is layered so no module imports one above it: ``options`` (flags generated from the engine's
option declarations) and ``table`` (the ranking table) ← ``local`` (engine-only commands and the shared
progress display) ← ``alchemy``; ``client`` (HTTP) ← ``remote`` ← ``operations`` (serve, worker, keys,
demo ...). This module only assembles their parsers and runs the chosen command; building them loads no
torch (each command imports the engine code it runs).
"""

from __future__ import annotations

import argparse
import sys

from bnrank import __version__
from bnrank.cli import alchemy, local, operations, remote
from bnrank.engine.errors import BNRankError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnrank", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--version", action="version", version=f"bnrank {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (local, alchemy, operations, remote):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BNRankError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad option values (the engine configs' validation)
        print(f"error: {exc}", file=sys.stderr)
        return 2
