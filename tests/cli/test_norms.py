"""`bnrank rank` and `bnrank inspect` on a network without BatchNorm: the table's trained/norm columns."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bnrank.cli import main
from bnrank.engine.architectures import architecture_from_network_def, build_model
from bnrank.engine.checkpoints import save_weights
from tests.engine.volumes import write_nnunet_dataset

NETWORK_DEF = {"_target_": "UNet", "channels": [4, 8], "strides": [2], "norm": "instance"}


def test_rank_and_inspect_an_instance_norm_network(tmp_path: Path, capsys) -> None:
    data = write_nnunet_dataset(tmp_path / "data", n_cases=4, shape=(16, 16, 16), n_labels=1)
    torch.manual_seed(0)
    ckpt = save_weights(
        architecture_from_network_def(NETWORK_DEF).build(in_channels=1, out_channels=2), tmp_path / "in.safetensors"
    )
    defn = tmp_path / "def.json"
    defn.write_text(json.dumps(NETWORK_DEF))
    small = ["--max-steps", "2", "--val-every", "2", "--patch-size", "16", "--quiet"]
    out = tmp_path / "ranking.json"
    argv = ["rank", "--dataset", str(data), *small, "--network-def", str(defn), "--json", str(out), str(ckpt)]
    assert main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    header = table[0].split()
    assert header[-3:] == ["trained", "norm", "checkpoint"]
    rows = [line for line in table if line.rstrip().endswith(("in.safetensors", "(monai:UNet)"))]
    assert len(rows) == 2 and all("instance+affine-inserted" in row for row in rows)
    entries = json.loads(out.read_text())["entries"]
    assert {e["norm_kinds"][0] for e in entries} == {"instance+affine-inserted"}
    assert all(f"{e['trained_parameters']:,}" in row for e, row in zip(entries, rows, strict=False))

    assert main(["inspect", str(ckpt), "--network-def", str(defn)]) == 0
    assert "norm layer(s) without affine; norm-only evaluation inserts identity affines" in capsys.readouterr().out
    bn = save_weights(build_model("unet3d", in_channels=1, out_channels=2, width=4), tmp_path / "bn.safetensors")
    assert main(["inspect", str(bn)]) == 0
    assert "norm layers (batch)" in capsys.readouterr().out
