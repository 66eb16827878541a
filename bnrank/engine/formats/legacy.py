"""Sizing a legacy (pre-1.6, non-zip) PyTorch pickle by walking it with an unpickler that builds nothing."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from bnrank.engine.errors import CheckpointTooLargeError, CorruptCheckpointError
from bnrank.engine.formats.limits import DEFAULT_MAX_CHECKPOINT_BYTES, size_text

# Bytes per element of the storage classes a legacy (pre-1.6) checkpoint names.
_LEGACY_ELEMENT_SIZES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "UntypedStorage": 1,
}


class _Placeholder:
    """Stands in for every object a legacy pickle builds while it is only being sized: it runs nothing."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


class _Global:
    """Stands in for every class or function a legacy pickle names; calling it builds a `_Placeholder`."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> _Placeholder:
        return _Placeholder()


_SHORT_READ = 1 << 20  # over-reads up to this are the unpickler's business (EOF), not an allocation hazard


class _BoundedReader:
    """A file view that refuses any read past its end instead of allocating what the pickle asks for.

    A genuine pickle never asks for bytes it does not contain; a crafted one claiming a 100 GB string is
    answered with an error, not a 100 GB buffer.
    """

    def __init__(self, handle: Any, size: int, name: str) -> None:
        self._f, self._size, self._name = handle, size, name

    def _left(self) -> int:
        return self._size - self._f.tell()

    def read(self, n: int = -1) -> bytes:
        left = max(self._left(), 0)
        if n is None or n < 0:
            n = left
        if n > left and n > _SHORT_READ:  # a length field larger than the rest of the file: a lie
            raise CorruptCheckpointError(f"{self._name}: the pickle asks for {n:,} bytes but only {left:,} remain")
        return self._f.read(min(n, left))  # short reads (at the end) are left for the unpickler to judge

    def readline(self) -> bytes:
        return self._f.readline(max(self._left(), 0))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _SizingUnpickler(pickle._Unpickler):  # the pure-Python unpickler, so every read goes through read()
    """Records the storages a legacy pickle declares; every name it imports becomes a harmless `_Global`."""

    def __init__(self, reader: _BoundedReader) -> None:
        super().__init__(reader)  # type: ignore[arg-type]
        self.storages: dict[str, int] = {}

    def find_class(self, module: str, name: str) -> Any:
        return _Global(name)

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            storage_type, key, numel = pid[1], str(pid[2]), pid[4]
            if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
                raise ValueError(f"storage {key} has a nonsensical size {numel!r}")
            name = storage_type.name if isinstance(storage_type, _Global) else ""
            nbytes = numel * _LEGACY_ELEMENT_SIZES.get(name, 16)
            self.storages[key] = max(self.storages.get(key, 0), nbytes)
        return _Placeholder()


def check_legacy_torch(path: Path, *, max_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES) -> int:
    """Refuse a legacy (non-zip) PyTorch file whose declared storages exceed the file or `max_bytes`.

    `torch.load` allocates each storage at the element count the pickle states, before reading its bytes
    (untouched, such an allocation costs address space rather than RAM under Linux's default overcommit,
    but it is committed memory under strict overcommit and fails a process limited by RLIMIT_AS).
    This walks the same pickles (magic number, protocol, system info, the object, the storage keys) with an
    unpickler that builds nothing, sums the declared storage sizes and compares them with what the file
    can actually hold: every byte of a storage is stored after the pickles, so more is a lie. A walk that
    breaks off (a malformed or malicious pickle) still checks what was declared before the break, which is
    all `torch.load` could allocate before breaking at the same place; the verdict is then torch's.
    """
    size = path.stat().st_size
    if size > max_bytes:
        raise CheckpointTooLargeError(
            f"{path.name}: the file is {size_text(size)}, above the {size_text(max_bytes)} limit"
        )
    storages: dict[str, int] = {}
    try:
        with path.open("rb") as handle:
            reader = _BoundedReader(handle, size, path.name)
            for _ in range(5):
                unpickler = _SizingUnpickler(reader)
                try:
                    unpickler.load()
                finally:
                    storages.update(unpickler.storages)
    except CorruptCheckpointError:
        raise
    except Exception:  # torch.load gives the verdict on what cannot be walked (unsafe, corrupt)
        pass  # what was declared up to here is still checked: torch would allocate it before failing too
    declared = sum(storages.values())
    if declared > size:  # and so above max_bytes too, which the file is not
        raise CheckpointTooLargeError(
            f"{path.name}: the checkpoint declares {size_text(declared)} of tensor data but the file is "
            f"{size_text(size)}; it cannot hold them"
        )
    return declared
