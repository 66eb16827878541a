"""Sizing a PyTorch zip checkpoint from its central directory before `torch.load` allocates what it declares."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from bnrank.engine.errors import CheckpointTooLargeError, CorruptCheckpointError
from bnrank.engine.formats.limits import (
    DEFAULT_MAX_CHECKPOINT_BYTES,
    DEFAULT_MAX_ZIP_ENTRIES,
    DEFAULT_MAX_ZIP_RATIO,
    ZIP_RATIO_FLOOR,
    size_text,
)
from bnrank.engine.formats.zips import declared_entry_count


def check_torch_zip(
    path: Path,
    *,
    max_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES,
    max_ratio: float = DEFAULT_MAX_ZIP_RATIO,
    max_entries: int = DEFAULT_MAX_ZIP_ENTRIES,
) -> int:
    """Refuse a PyTorch zip whose entries would inflate past the limits; return the decompressed total.

    Only the central directory is read (zipfile reads no member data for `infolist`). PyTorch's reader
    allocates each record at the size the directory declares and never decompresses past it, so the
    declared sizes bound what `torch.load` can allocate for the archive.
    """
    size = path.stat().st_size
    try:
        count = declared_entry_count(path)
        if count is not None and count > max_entries:
            raise CheckpointTooLargeError(
                f"{path.name}: the archive has {count:,} entries, more than the {max_entries:,} allowed"
            )
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise CorruptCheckpointError(f"{path.name}: truncated or corrupt PyTorch checkpoint ({exc})") from exc
    if len(entries) > max_entries:
        raise CheckpointTooLargeError(
            f"{path.name}: the archive has {len(entries):,} entries, more than the {max_entries:,} allowed"
        )
    total = sum(max(info.file_size, 0) for info in entries)
    if total > max_bytes:
        raise CheckpointTooLargeError(
            f"{path.name}: the archive decompresses to {size_text(total)}, above the {size_text(max_bytes)} limit"
        )
    if total > ZIP_RATIO_FLOOR and total > max_ratio * max(size, 1):
        raise CheckpointTooLargeError(
            f"{path.name}: the archive inflates {total / max(size, 1):,.0f}-fold ({size_text(size)} to "
            f"{size_text(total)}), more than the {max_ratio:g}-fold allowed; torch.save writes uncompressed "
            "archives, so this is not a plain checkpoint"
        )
    return total

