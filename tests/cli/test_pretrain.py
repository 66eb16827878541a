"""`bnrank pretrain` end to end: a folder of volumes in, a checkpoint a ranking can read out."""

from __future__ import annotations

from pathlib import Path

from bnrank.cli import main
from bnrank.engine.checkpoints import read_state_dict
from bnrank.engine.fitting import load_checkpoint
from tests.engine.test_pretrain import _write_volumes


def test_cli_pretrain_writes_a_rankable_checkpoint(tmp_path: Path, capsys) -> None:
    folder = _write_volumes(tmp_path / "mr")
    out = tmp_path / "genesis.safetensors"
    args = ["pretrain", "--volumes", str(folder), "--architecture", "unet3d", "--width", "4", "--steps", "2"]
    args += [
        "--patch-size",
        "16",
        "--batch-size",
        "2",
        "--seed",
        "1",
        "--precision",
        "fp32",
        "--quiet",
        "--threads",
        "1",
    ]
    assert main([*args, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    state, meta = read_state_dict(out)
    assert meta["format"] == "safetensors" and state["out_tr.final_conv.weight"].shape[0] == 1
    _, report = load_checkpoint(out, out_channels=3)  # ranking gives it a fresh 3-class head
    assert report.architecture == "unet3d" and report.head_reinitialised
    assert main(["pretrain", "--volumes", str(tmp_path / "nowhere"), "--steps", "1", "--out", str(out)]) == 2
