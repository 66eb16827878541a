"""How large a checkpoint may be before reading it allocates anything, and how to say a size to a person.

The service passes its upload limit as `max_bytes`; the defaults suit a CLI user.
"""

MiB = 1024**2
GiB = 1024**3
# Largest decompressed checkpoint read by default: SwinUNETR-sized networks are a few hundred MB in fp32.
DEFAULT_MAX_CHECKPOINT_BYTES = 2 * GiB
# torch.save stores zip entries uncompressed (ratio ≤ 1), so a high inflation ratio means a crafted file.
# Below the floor a high ratio is harmless (it cannot cost more than the floor) and is not judged.
DEFAULT_MAX_ZIP_RATIO = 10.0
ZIP_RATIO_FLOOR = 16 * MiB
# One entry per storage plus a few bookkeeping records; real networks have hundreds to a few thousand.
DEFAULT_MAX_ZIP_ENTRIES = 65_536


def size_text(n: float) -> str:
    """Bytes for a message: the unit a person would use."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"
