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


def test_remote_upload_sends_the_head_a_user_names(tmp_path: Path) -> None:
    """`bnrank remote upload --head` is the upload's `head` query parameter (the flag comes from CandidateOptions);
    without it nothing is sent and the service keeps its own rule."""
    import json

    import httpx

    from bnrank.cli import build_parser
    from bnrank.cli.client import Client
    from bnrank.cli.remote import _remote

    sent: list[dict[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(dict(request.url.params))
        body = {"id": "ck1", "name": "m", "architecture": "onnx:0123abcd", "sha256": "0" * 64}
        return httpx.Response(201, content=json.dumps(body).encode())

    model = tmp_path / "m.onnx"
    model.write_bytes(b"graph")
    for extra in (["--head", "decoder.final_conv"], []):
        args = build_parser().parse_args(["remote", "--url", "http://api", "upload", *extra, str(model)])
        client = Client("http://api", None)
        client.http = httpx.Client(base_url="http://api", transport=httpx.MockTransport(answer))
        assert _remote(args, client) == 0
    assert sent == [{"name": "m.onnx", "head": "decoder.final_conv"}, {"name": "m.onnx"}]
