"""Zips and folders from strangers: escapes, links, bombs and counts refused before anything is extracted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bnrank.engine.errors import CheckpointTooLargeError, CorruptCheckpointError
from bnrank.engine.fitting import load_checkpoint
from bnrank.engine.formats.zips import open_zip, safe_member_name

from . import makers as mk


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("a/b.json", "a/b.json"),
        ("./a//b", "a/b"),
        ("../plans.json", None),
        ("a/../../x", None),
        ("/etc/passwd", None),
        ("C:/x", None),
        ("a\\..\\x", None),
    ],
)
def test_member_names(name: str, safe: str | None) -> None:
    assert safe_member_name(name) == safe


def test_zip_with_parent_entries_is_refused(tmp_path: Path) -> None:
    path = mk.zip_with_entries(
        tmp_path / "escape.zip",
        {"model/plans.json": json.dumps(mk.plans()).encode(), "../../outside.txt": b"x"},
    )
    with pytest.raises(CorruptCheckpointError, match=r"entry '../../outside.txt' points outside the archive"):
        load_checkpoint(path)
    assert not (tmp_path.parent / "outside.txt").exists()


def test_zip_with_absolute_entry_is_refused(tmp_path: Path) -> None:
    path = mk.zip_with_entries(tmp_path / "abs.zip", {"/tmp/evil.json": b"{}"})
    with pytest.raises(CorruptCheckpointError, match="points outside the archive"):
        load_checkpoint(path)


def test_zip_with_symlink_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CorruptCheckpointError, match="is a symbolic link"):
        load_checkpoint(mk.symlink_zip(tmp_path / "link.zip"))


def test_zip_bomb_is_refused_from_its_directory(tmp_path: Path) -> None:
    path = mk.zip_bomb(tmp_path / "bomb.zip")
    assert path.stat().st_size < 1024**2
    with pytest.raises(CheckpointTooLargeError, match="zip bomb"):
        load_checkpoint(path)
    with pytest.raises(CheckpointTooLargeError, match="above the"):
        load_checkpoint(path, max_bytes=8 * 1024**2)


def test_too_many_entries_are_refused_before_parsing(tmp_path: Path) -> None:
    path = mk.zip_with_entries(tmp_path / "many.zip", {f"f{i}": b"" for i in range(50)})
    with pytest.raises(CheckpointTooLargeError, match="50 entries, more than the 10 allowed"):
        open_zip(path, max_bytes=1024**2, max_members=10)


def test_folder_with_symlink_is_refused(tmp_path: Path) -> None:
    folder, _ = mk.write_nnunet_folder(tmp_path)
    os.symlink("/etc/passwd", folder / "dataset_fingerprint_link.json")
    with pytest.raises(CorruptCheckpointError, match="is a symbolic link"):
        load_checkpoint(folder)


def test_zip_in_no_known_format_says_what_is_read(tmp_path: Path) -> None:
    path = mk.zip_with_entries(tmp_path / "notes.zip", {"readme.txt": b"hello"})
    with pytest.raises(CorruptCheckpointError, match=r"none of the formats BNRank reads .* it holds readme.txt"):
        load_checkpoint(path)
