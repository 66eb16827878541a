"""`bnrank rank --verify K` end to end: the verify report in the table and the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bnrank.cli import main
from bnrank.engine.architectures import build_model
from bnrank.engine.checkpoints import save_weights
from tests.engine.tiny import WIDTH
from tests.engine.volumes import write_nnunet_dataset


def test_rank_verify_in_cli_and_json(tmp_path: Path, capsys) -> None:
    data = write_nnunet_dataset(tmp_path / "data", n_cases=4, shape=(16, 16, 16), n_labels=1)
    torch.manual_seed(0)
    good = save_weights(build_model("unet3d", in_channels=1, out_channels=2, width=WIDTH), tmp_path / "g.safetensors")
    out = tmp_path / "ranking.json"
    small = [
        "--max-steps",
        "2",
        "--val-every",
        "2",
        "--patch-size",
        "16",
        "--quiet",
        "--precision",
        "fp32",
        "--threads",
        "1",
    ]
    args = ["rank", "--dataset", str(data), *small, "--verify", "1", "--verify-steps", "2", "--json", str(out)]
    assert main([*args, str(good)]) == 0
    ranking = json.loads(out.read_text())
    verify = ranking["verify"]
    assert verify["k"] == 1 and verify["config"]["max_steps"] == 2
    assert len(verify["checked"]) == 2  # the candidate and the control
    top, bottom = sorted(verify["checked"], key=lambda row: row["rank"])
    assert verify["agrees"] is (top["finetuned_score"] > bottom["finetuned_score"])
    # 2 steps validated at step 2 only: nothing to re-score at half the budget, and the JSON says why
    stability = ranking["stability"]
    assert stability["kendall_tau"] is None and stability["reason"].startswith("no validation that early")
    assert "verify: fine-tuned the top 1" in capsys.readouterr().out
