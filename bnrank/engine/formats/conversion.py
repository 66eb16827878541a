"""The conversion report of a converted candidate as one line of text, for the CLI and the dashboard.

Torch-free (it reads the ``source`` dict of a load report), so ``bnrank remote`` and the web pages can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def conversion_line(source: Mapping[str, Any] | None) -> str | None:
    """Operators, norms found, norms without affine (an identity affine is inserted for the evaluation), the head
    chosen, and whether the graph came out of the sandbox; None for a candidate that was not converted."""
    if not source or not isinstance(source.get("conversion"), Mapping):
        return None
    c = source["conversion"]
    ops = c.get("operators") or {}
    top = ", ".join(f"{op} {n}" for op, n in sorted(ops.items(), key=lambda item: -item[1])[:5])
    norms = ", ".join(f"{op} {n}" for op, n in (c.get("norms") or {}).items()) or "none (a folded export?)"
    parts = [
        f"ONNX graph, op set {source.get('opset', '?')}: {sum(ops.values())} nodes ({top})",
        f"norms: {norms}",
    ]
    if c.get("norms_without_affine"):
        parts.append(f"{c['norms_without_affine']} without affine (identity affines inserted)")
    parts.append("head: " + (", ".join(c.get("head") or []) or "none found"))
    if source.get("converted"):
        parts.append("exported from TorchScript in the sandbox")
    return "; ".join(parts)
