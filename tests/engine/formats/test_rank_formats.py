"""`bnrank rank` over a mixed pool: an nnU-Net model folder, a zipped MONAI bundle and a TorchScript archive
beside a Models Genesis (unet3d) checkpoint, each with its own random-init control."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bnrank.cli import main
from bnrank.engine.architectures import build_model
from bnrank.engine.checkpoints import save_weights

from ..volumes import write_nnunet_dataset
from . import makers as mk


def test_rank_mixed_formats_beside_models_genesis(tmp_path: Path, capsys) -> None:
    data = write_nnunet_dataset(tmp_path / "data", n_cases=4, shape=(16, 16, 16), n_labels=1)
    nnunet, _ = mk.write_nnunet_folder(tmp_path / "results", seed=3)
    bundle = mk.zip_folder(mk.write_bundle(tmp_path, mk.SEGRESNET_DEF, seed=3), tmp_path / "bundle.zip")
    script, _ = mk.write_torchscript(tmp_path / "traced.pt", seed=3)
    torch.manual_seed(4)
    genesis = save_weights(build_model("unet3d", in_channels=1, out_channels=2, width=4), tmp_path / "g.safetensors")
    out = tmp_path / "ranking.json"
    small = ["--max-steps", "2", "--val-every", "2", "--patch-size", "16", "--quiet", "--json", str(out)]
    code = main(["rank", "--dataset", str(data), *small, str(nnunet), str(bundle), str(script), str(genesis)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    entries = {e["checkpoint"]: e for e in json.loads(out.read_text())["entries"]}
    assert all(e["status"] == "ok" for e in entries.values()), [e["error"] for e in entries.values()]
    assert entries[str(nnunet)]["architecture"] == "nnunet"
    assert entries[str(nnunet)]["load_report"]["source"]["defaults"]["patch_size"] == [16, 16, 16]
    assert entries[str(bundle)]["architecture"].startswith("monai:SegResNet@")
    assert entries[str(script)]["architecture"] == entries[str(genesis)]["architecture"] == "unet3d"
    assert entries[str(script)]["load_report"]["format"] == "torchscript"
    controls = sorted(e["architecture"] for e in entries.values() if e["is_control"])
    assert controls == sorted(["nnunet", entries[str(bundle)]["architecture"], "unet3d"])
    assert str(nnunet) in printed and "control: random init (nnunet)" in printed
