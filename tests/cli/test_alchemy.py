"""`bnrank alchemy` end to end, as a user runs it: one run, k-fold, and errors that exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnrank.cli import main
from bnrank.engine.architectures import build_model
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.fitting import load_checkpoint
from tests.engine.tiny import WIDTH
from tests.engine.volumes import write_nnunet_dataset


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_nnunet_dataset(tmp_path_factory.mktemp("ds") / "Dataset001_Synthetic", n_cases=4, shape=(24, 24, 24))


TINY_BUDGET = ["--max-steps", "2", "--val-every", "2", "--patch-size", "16", "--precision", "fp32", "--threads", "1"]


def test_cli_alchemy_end_to_end(tmp_path: Path, tiny_dataset: Path, capsys) -> None:
    ckpt = save_weights(build_model("unet3d", in_channels=1, out_channels=2, width=WIDTH), tmp_path / "c.safetensors")
    out, js = tmp_path / "w.safetensors", tmp_path / "a.json"
    argv = ["alchemy", "--dataset", str(tiny_dataset), "--checkpoint", str(ckpt), "--out", str(out)]
    argv += ["--json", str(js), "--identify-steps", "2", "--fraction", "0.1", "--quiet", *TINY_BUDGET]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "identification (BN-only)" in printed and "re-initialised" in printed and "after alchemy" in printed
    report = json.loads(js.read_text())
    assert report["mode"] == "alchemy" and report["weights"] == str(out)
    assert report["modification"]["reinitialised"] > 0
    assert {"raw", "after_identification", "after_alchemy"} <= set(report["gamma"])
    assert main(["inspect", str(out)]) == 0
    assert "unet3d" in capsys.readouterr().out
    _, rep = load_checkpoint(out)
    assert rep.build_kwargs["out_channels"] == 3 and rep.matched_fraction == 1.0


def test_cli_alchemy_errors_exit_2(tmp_path: Path, tiny_dataset: Path, capsys) -> None:
    ckpt = save_weights(build_model("unet3d", in_channels=1, out_channels=2, width=WIDTH), tmp_path / "c.safetensors")
    out = tmp_path / "w.safetensors"
    base = ["alchemy", "--dataset", str(tiny_dataset), "--checkpoint", str(ckpt), "--out", str(out), "--quiet"]
    base += [*TINY_BUDGET, "--cache-dir", str(tmp_path / "cache")]
    assert main([*base, "--folds", "9"]) == 2
    assert "error: 9 folds need at least 9 cases" in capsys.readouterr().err
    assert main([*base, "--fraction", "1.5"]) == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()


def test_cli_alchemy_folds(tmp_path: Path, tiny_dataset: Path, capsys) -> None:
    ckpt = save_weights(build_model("unet3d", in_channels=1, out_channels=2, width=WIDTH), tmp_path / "c.safetensors")
    out, js = tmp_path / "w.safetensors", tmp_path / "a.json"
    argv = ["alchemy", "--dataset", str(tiny_dataset), "--checkpoint", str(ckpt), "--out", str(out)]
    argv += ["--json", str(js), "--mode", "finetune", "--folds", "2", "--quiet", *TINY_BUDGET]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    assert "± " in capsys.readouterr().out
    report = json.loads(js.read_text())
    assert report["n_folds"] == 2 and len(report["folds"]) == 2
    assert (tmp_path / "w.fold0.safetensors").exists() and (tmp_path / "w.fold1.safetensors").exists()
