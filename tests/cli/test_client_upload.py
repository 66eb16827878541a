"""What `bnrank remote upload FOLDER` sends: the folder's files as a zip, links left out."""

import io
import zipfile
from pathlib import Path

from bnrank.cli.client import zip_folder


def test_folder_zip_holds_its_files_and_no_links(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text("{}")
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"weights")
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    (folder / "fold_0" / "leak.txt").symlink_to(secret)
    (folder / "linked_dir").symlink_to(tmp_path)
    buffer = io.BytesIO()
    zip_folder(folder, buffer)
    with zipfile.ZipFile(buffer) as archive:
        assert sorted(archive.namelist()) == ["fold_0/checkpoint_final.pth", "plans.json"]
        assert archive.read("fold_0/checkpoint_final.pth") == b"weights"
