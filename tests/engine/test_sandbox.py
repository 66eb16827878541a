"""The sandboxed TorchScript → ONNX conversion: an archive of an unknown architecture is ranked through it when a
deployment opts in, refused as before otherwise; inside the box writing the host, sockets, fork and a 100 GB
allocation fail, and the reason comes back. Needs Debian's bubblewrap (`.ci/run` and `make test` install it)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bnrank.engine import sandbox
from bnrank.engine.errors import UnknownArchitectureError
from bnrank.engine.fitting import load_checkpoint
from bnrank.engine.ranking import Candidate, evaluate_candidate
from tests.engine.formats import onnx_makers as om
from tests.engine.tiny import blob_task, small_config

LIMITS = sandbox.Limits(memory_bytes=4 * 1024**3, cpu_seconds=60, wall_seconds=300)


@pytest.fixture
def boxed() -> Iterator[None]:
    problem = sandbox.available()
    assert problem is None, problem  # bubblewrap is part of the test setup, not optional
    sandbox.configure("bwrap")
    try:
        yield
    finally:
        sandbox.configure("off")


def test_without_the_sandbox_an_unknown_archive_is_refused_as_before(tmp_path: Path) -> None:
    path, _ = om.unregistered_torchscript(tmp_path / "linknet.pt")
    with pytest.raises(UnknownArchitectureError, match="match no registered architecture"):
        load_checkpoint(path)


def test_an_unknown_archive_is_converted_in_the_box_and_ranked(tmp_path: Path, boxed: None) -> None:
    path, original = om.unregistered_torchscript(tmp_path / "linknet.pt", seed=3)
    model, report = load_checkpoint(path)
    assert report.format == "torchscript" and report.architecture.startswith("onnx:")
    assert "sandbox" in report.source["converted"]
    assert report.source["conversion"]["norms"] == {"BatchNormalization": 1, "InstanceNormalization": 1}
    x = torch.randn(2, 1, 16, 16, 16)
    original.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), atol=1e-5, rtol=1e-5)
    entry = evaluate_candidate(Candidate("linknet", path), blob_task(), small_config(max_steps=2, val_every=2))
    assert entry.status == "ok", entry.error
    assert entry.inserted_affines  # the InstanceNorm without affine got its identity affine


def test_an_archive_allocating_100_gb_is_stopped_with_the_reason(tmp_path: Path, boxed: None) -> None:
    path = om.greedy_torchscript(tmp_path / "greedy.pt")
    with pytest.raises(sandbox.SandboxError, match="allocate more than"):
        sandbox.torchscript_to_onnx(path, tmp_path / "out.onnx", 1, LIMITS)


def _boxed_python(tmp_path: Path, code: str) -> str:
    archive = tmp_path / "archive.pt"
    archive.write_bytes(b"any")
    with pytest.raises(sandbox.SandboxError) as caught:
        sandbox.run_boxed(archive, tmp_path / "out.onnx", [sys.executable, "-I", "-c", code], LIMITS)
    return str(caught.value)


def test_the_box_cannot_write_the_host(tmp_path: Path, boxed: None) -> None:
    marker = tmp_path / "marker"  # /tmp inside the box is its own tmpfs: the host path is never reached
    code = (  # the marker lands in the box's own /tmp (a tmpfs), the package is mounted read-only
        f"import os; os.makedirs({str(tmp_path)!r}, exist_ok=True); open({str(marker)!r}, 'w').write('ran'); "
        f"open({str(Path(sandbox.__file__))!r}, 'a').write('#')"
    )
    reason = _boxed_python(tmp_path, code)
    assert "Read-only file system" in reason
    assert not marker.exists()
    assert not Path(sandbox.__file__).read_text().endswith("#")


@pytest.mark.parametrize(
    "code",
    [
        "import socket; socket.create_connection(('127.0.0.1', 5432), timeout=5)",
        "import socket; socket.socket(socket.AF_UNIX)",
        "import os; os.fork()",
        "import subprocess; subprocess.run(['/usr/bin/true'])",
    ],
)
def test_the_box_has_no_sockets_and_no_processes(tmp_path: Path, boxed: None, code: str) -> None:
    marker = tmp_path / "marker"
    reason = _boxed_python(tmp_path, f"{code}; open({str(marker)!r}, 'w').write('ran')")
    assert "Operation not permitted" in reason
    assert not marker.exists()


def test_the_box_cannot_allocate_100_gb(tmp_path: Path, boxed: None) -> None:
    reason = _boxed_python(tmp_path, "hoard = bytearray(100 * 1024**3)")
    assert "allocate more than its 4 GiB" in reason


def test_threads_still_work_in_the_box(tmp_path: Path, boxed: None) -> None:
    out, archive = tmp_path / "out.onnx", tmp_path / "archive.pt"
    archive.write_bytes(b"any")
    code = "import threading; t = threading.Thread(target=print); t.start(); t.join(); "
    code += "open('/out/model.onnx', 'w').write('ok')"
    sandbox.run_boxed(archive, out, [sys.executable, "-I", "-c", code], LIMITS)
    assert out.read_text() == "ok"
