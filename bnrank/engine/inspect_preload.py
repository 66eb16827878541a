"""Imported once by the inspection forkserver (see inspect_isolated.py), so every child it forks starts warm.

Each child is a fork of that server: whatever the server has imported or computed, a child has for free.
Besides torch and MONAI this includes the reference shapes `ProbeInfer` builds to recognise a checkpoint's
architecture (a few meta-device builds per registered network, most of a small checkpoint's inspection).
Nothing here runs in the caller's process.
"""

from __future__ import annotations

import contextlib

from bnrank.engine import inspect_isolated
from bnrank.engine.architectures import ARCHITECTURES


def _warm_caches() -> None:
    """An empty checkpoint matches nothing, but recognising it computes and keeps every reference."""
    for arch in ARCHITECTURES.values():
        with contextlib.suppress(Exception):  # warming is an optimisation; a failure only means a cold child
            arch.infer({})


_warm_caches()
__all__ = ["inspect_isolated"]
