"""Reading a model folder or a zip of one without trusting its names, sizes or counts.

nnU-Net model folders and MONAI bundles travel as zips (or arrive as folders on a CLI user's disk); a
TorchScript archive is a zip too. A stranger's zip can name `../../etc/passwd`, an absolute path, a
symlink, a million entries, or a 1 kB entry that inflates to gigabytes. Every one of those is judged from
the central directory alone, before a byte of any member is decompressed, and a member is then read with a
hard cap at the size its directory entry declared (zipfile also stops there, but the cap does not rely on
it). Nothing is ever extracted under a name taken from the archive: a member that must be a file on disk
(`torch.load` of a nested checkpoint) is copied to a fresh temporary file of our naming.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from bnrank.engine.errors import CheckpointTooLargeError, CorruptCheckpointError

MiB = 1024**2
GiB = 1024**3
# A model folder holds a handful of files (nnU-Net: plans, dataset, one checkpoint per fold; a bundle: a few
# configs and docs); a TorchScript archive one entry per module's code and per storage.
DEFAULT_MAX_MEMBERS = 65_536
# A deflated member of real weights shrinks little (float noise); JSON shrinks ~10-fold. Past this it is a bomb.
DEFAULT_MAX_RATIO = 200.0
RATIO_FLOOR = 16 * MiB  # below this a high ratio cannot cost more than the floor and is not judged
_COPY_CHUNK = 1 * MiB
MAX_JSON_BYTES = 16 * MiB  # plans of a big dataset are ~50 kB; a dataset.json with per-case lists a few MB


def _size(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def safe_member_name(name: str) -> str | None:
    """The member's path relative to the archive root, or None when it would escape it.

    Refused: absolute paths, drive letters, backslashes (a Windows separator zipfile would keep), `..`
    components and NUL bytes. `./` components are dropped.
    """
    if not name or "\x00" in name or "\\" in name or name.startswith("/"):
        return None
    if len(name) > 1 and name[1] == ":":
        return None
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    return "/".join(parts)


@dataclass(frozen=True)
class Member:
    """One regular file of a model folder or zip: its safe relative name and declared size."""

    name: str
    size: int


class ModelTree:
    """The files of a model folder or a zip of one, checked; read them with `read` or `as_file`."""

    def __init__(self, label: str, members: dict[str, Member], max_bytes: int) -> None:
        self.label = label
        self.members = members
        self.max_bytes = max_bytes

    # ----------------------------------------------------------------------------------- navigation
    def names(self) -> list[str]:
        return sorted(self.members)

    def find(self, suffix: str) -> list[str]:
        """Members whose path is `suffix` or ends with `/suffix` (a zip often wraps the folder in one)."""
        return sorted(n for n in self.members if n == suffix or n.endswith("/" + suffix))

    def read(self, name: str) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_array(self, name: str) -> bytearray:
        """A member as a mutable buffer (tensors are viewed over it without another copy)."""
        return bytearray(self.read(name))

    def as_file(self, name: str) -> contextlib.AbstractContextManager[Path]:  # pragma: no cover - abstract
        """The member as a file on disk for as long as the context lasts."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the archive (folders hold nothing open)."""

    def __enter__(self) -> ModelTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FolderTree(ModelTree):
    """A model folder on disk: regular files only; symlinks (which could point anywhere) are refused."""

    def __init__(self, root: Path, members: dict[str, Member], max_bytes: int) -> None:
        super().__init__(root.name, members, max_bytes)
        self.root = root

    def _path(self, name: str) -> Path:
        if name not in self.members:
            raise CorruptCheckpointError(f"{self.label}: has no file {name!r}")
        return self.root / name

    def read(self, name: str) -> bytes:
        path = self._path(name)
        with path.open("rb") as handle:
            data = handle.read(self.members[name].size + 1)
        if len(data) > self.members[name].size:
            raise CorruptCheckpointError(f"{self.label}: {name} grew while it was read")
        return data

    @contextlib.contextmanager
    def as_file(self, name: str) -> Iterator[Path]:
        yield self._path(name)


class ZipTree(ModelTree):
    """A zip whose central directory passed `open_zip`'s checks; members are read capped at their size."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], max_bytes: int):
        members = {name: Member(name, info.file_size) for name, info in infos.items()}
        super().__init__(path.name, members, max_bytes)
        self.archive = archive
        self.infos = infos

    def _open(self, name: str) -> tuple[zipfile.ZipInfo, object]:
        info = self.infos.get(name)
        if info is None:
            raise CorruptCheckpointError(f"{self.label}: has no member {name!r}")
        try:
            return info, self.archive.open(info)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError) as exc:
            raise CorruptCheckpointError(f"{self.label}: member {name} cannot be read ({exc})") from exc

    def _chunks(self, name: str) -> Iterator[bytes]:
        info, handle = self._open(name)
        seen = 0
        try:
            while True:
                try:
                    chunk = handle.read(_COPY_CHUNK)  # type: ignore[attr-defined]
                except (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error) as exc:
                    raise CorruptCheckpointError(f"{self.label}: member {name} is corrupt ({exc})") from exc
                if not chunk:
                    break
                seen += len(chunk)
                if seen > info.file_size:  # more than declared: the directory lied
                    raise CheckpointTooLargeError(
                        f"{self.label}: member {name} inflates past the {info.file_size:,} bytes it declares"
                    )
                yield chunk
        finally:
            handle.close()  # type: ignore[attr-defined]

    def read(self, name: str) -> bytes:
        return b"".join(self._chunks(name))

    def read_array(self, name: str) -> bytearray:
        buffer = bytearray()
        for chunk in self._chunks(name):
            buffer += chunk
        return buffer

    @contextlib.contextmanager
    def as_file(self, name: str) -> Iterator[Path]:
        """Copy one member to a temporary file of our naming (never the member's), removed afterwards."""
        fd, tmp = tempfile.mkstemp(prefix="bnrank-member-", suffix=".bin")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self._chunks(name):
                    out.write(chunk)
            yield Path(tmp)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def close(self) -> None:
        self.archive.close()


def declared_entry_count(path: Path) -> int | None:
    """Entries the end-of-archive record declares, read before the central directory is parsed.

    Parsing builds one object per entry; a crafted archive of millions of empty entries would cost
    gigabytes there, so the count is judged first. None where this Python lacks the (long-standing,
    private) zipfile helper; the count is then judged after parsing.
    """
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:
        return None
    with path.open("rb") as handle:
        record = end_record(handle)
    if not record:
        raise zipfile.BadZipFile("no end-of-archive record")
    return int(record[zipfile._ECD_ENTRIES_TOTAL])


def open_zip(
    path: Path,
    *,
    max_bytes: int,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> ZipTree:
    """Open a zip after judging its directory: names, symlinks, member count, declared sizes, ratio.

    Directory entries are skipped; every other entry must be a regular file with a safe name.
    """
    size = path.stat().st_size
    try:
        count = declared_entry_count(path)
        if count is not None and count > max_members:
            raise CheckpointTooLargeError(
                f"{path.name}: the archive has {count:,} entries, more than the {max_members:,} allowed"
            )
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise CorruptCheckpointError(f"{path.name}: truncated or corrupt zip archive ({exc})") from exc
    try:
        infos = _check_entries(path.name, archive.infolist(), size, max_bytes, max_members, max_ratio)
    except BaseException:
        archive.close()
        raise
    return ZipTree(path, archive, infos, max_bytes)


def _check_entries(
    label: str, entries: list[zipfile.ZipInfo], size: int, max_bytes: int, max_members: int, max_ratio: float
) -> dict[str, zipfile.ZipInfo]:
    if len(entries) > max_members:
        raise CheckpointTooLargeError(
            f"{label}: the archive has {len(entries):,} entries, more than the {max_members:,} allowed"
        )
    infos: dict[str, zipfile.ZipInfo] = {}
    for info in entries:
        name = safe_member_name(info.filename)
        if name is None:
            raise CorruptCheckpointError(
                f"{label}: refused, the archive entry {info.filename!r} points outside the archive "
                "(absolute path, '..' or a drive letter)"
            )
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise CorruptCheckpointError(f"{label}: refused, the archive entry {info.filename!r} is a symbolic link")
        if info.is_dir() or not name:
            continue
        if name in infos:
            raise CorruptCheckpointError(f"{label}: the archive holds {name!r} twice")
        infos[name] = info
    total = sum(max(info.file_size, 0) for info in infos.values())
    if total > max_bytes:
        raise CheckpointTooLargeError(
            f"{label}: the archive decompresses to {_size(total)}, above the {_size(max_bytes)} limit"
        )
    if total > RATIO_FLOOR and total > max_ratio * max(size, 1):
        raise CheckpointTooLargeError(
            f"{label}: the archive inflates {total / max(size, 1):,.0f}-fold ({_size(size)} to {_size(total)}), "
            f"more than the {max_ratio:g}-fold allowed for model files: refused as a zip bomb"
        )
    return infos


def open_folder(root: Path, *, max_bytes: int, max_members: int = DEFAULT_MAX_MEMBERS) -> FolderTree:
    """A model folder's regular files, walked without following links; symlinks are refused."""
    members: dict[str, Member] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for entry in [*dirnames, *filenames]:
            full = base / entry
            info = full.lstat()
            if stat.S_ISLNK(info.st_mode):
                raise CorruptCheckpointError(
                    f"{root.name}: refused, {full.relative_to(root)} is a symbolic link (it could point anywhere)"
                )
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                raise CorruptCheckpointError(f"{root.name}: {full.relative_to(root)} is not a regular file")
            members[full.relative_to(root).as_posix()] = Member(full.relative_to(root).as_posix(), info.st_size)
            total += info.st_size
            if len(members) > max_members:
                raise CheckpointTooLargeError(f"{root.name}: more than {max_members:,} files in the model folder")
    if total > max_bytes:
        raise CheckpointTooLargeError(
            f"{root.name}: the folder holds {_size(total)}, above the {_size(max_bytes)} limit"
        )
    return FolderTree(root, members, max_bytes)


def is_zip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def read_json(tree: ModelTree, name: str) -> dict[str, Any]:
    """A JSON object member, bounded in size."""
    size = tree.members[name].size
    if size > MAX_JSON_BYTES:
        raise CorruptCheckpointError(f"{tree.label}: {name} is {size:,} bytes, too large for a configuration file")
    try:
        value = json.loads(tree.read(name))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CorruptCheckpointError(f"{tree.label}: {name} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CorruptCheckpointError(f"{tree.label}: {name} is not a JSON object")
    return value
