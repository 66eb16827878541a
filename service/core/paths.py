"""Data-root containment: a dataset reference must resolve to a folder inside one of the data roots.

Datasets are referenced by path, not uploaded, so the path is the attack surface: without this check a
user could point the service at ``/etc`` or at another tenant's data. ``..`` is refused outright (it has no
legitimate use in a reference and makes intent unclear); everything else is judged on the fully resolved
path, so a symlink inside a root that points outside it is refused too. The worker repeats the check
before reading, because a symlink can be swapped after registration.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path


class PathRefused(ValueError):
    """The reference is not a usable folder inside the data roots; the message says why."""


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def relative_to_roots(text: str, roots: Sequence[Path]) -> str:
    """``text`` with every data root (as configured and as resolved) written as ``<data root>``."""
    for root in sorted({str(r) for r in roots} | {str(r.resolve()) for r in roots}, key=len, reverse=True):
        text = text.replace(root + "/", "").replace(root, "<data root>")
    return text


def resolve_in_roots(uri: str, roots: Sequence[Path]) -> Path:
    """The resolved folder ``uri`` names, if it lies inside one of ``roots``.

    ``uri`` is an absolute path, a ``file://`` URI, or a path relative to a data root (the first root
    under which it exists wins).
    """
    text = uri.strip()
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif _SCHEME.match(text):
        raise PathRefused(
            f"uri {uri!r}: only local paths (or file:// URIs) under the data roots are supported, or s3:// URIs "
            "in an allowed bucket"
        )
    if not text:
        raise PathRefused("uri is empty")
    if "\x00" in text:
        raise PathRefused("uri contains a NUL byte")
    if text.startswith("~"):
        raise PathRefused(f"uri {uri!r}: '~' is not expanded; give a path under a data root")
    path = Path(text)
    if ".." in path.parts:
        raise PathRefused(f"uri {uri!r}: '..' is not allowed in dataset paths")
    resolved_roots = [r.resolve() for r in roots]
    candidates = [path] if path.is_absolute() else [root / path for root in resolved_roots]
    for candidate in candidates:
        try:
            resolved = candidate.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, RuntimeError, ValueError) as exc:  # permission denied, symlink loop, name too long
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise PathRefused(f"uri {uri!r}: cannot be resolved ({reason})") from exc
        if not any(resolved == root or resolved.is_relative_to(root) for root in resolved_roots):
            raise PathRefused(
                f"uri {uri!r} resolves (through a symlink) to a place outside the data roots"
                if resolved != candidate.absolute()
                else f"uri {uri!r} is outside the data roots"
            )
        if not resolved.is_dir():
            raise PathRefused(f"uri {uri!r} is a file; a dataset is a folder holding dataset.json")
        return resolved
    if path.is_absolute() and not any(path.is_relative_to(root) for root in (*roots, *resolved_roots)):
        # Same answer as for an existing folder outside the roots: existence there is none of our business.
        raise PathRefused(f"uri {uri!r} is outside the data roots")
    where = "" if path.is_absolute() else " under any data root"
    raise PathRefused(f"uri {uri!r} does not exist{where}")
