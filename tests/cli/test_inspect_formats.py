"""`bnrank inspect` on converted candidates: the source format and the conversion report are printed."""

from __future__ import annotations

from pathlib import Path

from bnrank.cli import main
from tests.engine.formats import onnx_makers as om


def test_bnrank_inspect_shows_the_source_format_and_the_conversion(tmp_path: Path, capsys) -> None:
    path = om.export(om.network("monai_unet"), tmp_path / "unet.onnx")
    assert main(["inspect", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "format:        onnx" in printed
    assert "conversion:    ONNX graph, op set 17" in printed and "norms: BatchNormalization 13" in printed
    assert "head: " in printed
