"""`bnrank rank --strategy`: the flag and its options come from RankConfig; the cascade prints its stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bnrank.cli import main
from bnrank.engine.architectures import build_model
from bnrank.engine.checkpoints import save_weights
from tests.engine.volumes import write_nnunet_dataset


def test_rank_by_cascade_prints_its_stages_and_writes_them(tmp_path: Path, capsys) -> None:
    data = write_nnunet_dataset(tmp_path / "data", n_cases=4, shape=(16, 16, 16), n_labels=1)
    cands = []
    for i in range(3):
        torch.manual_seed(i)
        model = build_model("unet3d", in_channels=1, out_channels=2, width=4)
        cands.append(str(save_weights(model, tmp_path / f"c{i}.safetensors")))
    out = tmp_path / "ranking.json"
    flags = ["--max-steps", "2", "--val-every", "2", "--patch-size", "16", "--quiet", "--threads", "1"]
    cascade = ["--strategy", "cascade", "--control-seeds", "2", "--race-steps", "2", "--race-rounds", "1"]
    cascade += ["--race-seeds", "2", "--budget-cap", "1", "--tie-resamples", "100"]
    assert main(["rank", "--dataset", str(data), *flags, *cascade, "--json", str(out), *cands]) == 0
    shown = capsys.readouterr().out
    assert "noise floor:" in shown and "race:" in shown and "round 1" in shown and "verdict:" in shown
    assert "fine-tune them all" not in shown
    ranking = json.loads(out.read_text())
    assert [s["stage"] for s in ranking["cascade"]["stages"]] == ["norm_only", "race"]
    assert ranking["config"]["rank"]["strategy"] == "cascade"
    assert ranking["ties"]["top_group"] == ranking["cascade"]["verdict"]["tied_group"]


def test_strategy_flag_refuses_what_it_does_not_know(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["rank", "--dataset", str(tmp_path), "--strategy", "everything", "x.safetensors"])
    assert "norm_only" in capsys.readouterr().err
    assert main(["rank", "--dataset", str(tmp_path), "--strategy", "cascade", "--halving-rounds", "2", "x.pt"]) == 2
    assert "race_rounds" in capsys.readouterr().err
