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


def test_bnrank_inspect_takes_the_head_a_user_names(tmp_path: Path, capsys) -> None:
    path = om.export(om.network("unet3d"), tmp_path / "u.onnx")
    assert main(["inspect", str(path), "--head", "up_tr64.ops.1.conv1"]) == 0
    printed = capsys.readouterr().out
    assert "head: out_tr_final_conv, up_tr64_ops_1_bn1, up_tr64_ops_1_conv1" in printed
    assert main(["inspect", str(path), "--head", "nowhere"]) != 0
    assert "'nowhere' names no convolution" in capsys.readouterr().err
