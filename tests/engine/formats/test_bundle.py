"""MONAI bundles (folder and zip) built with MONAI's SegResNet and SwinUNETR; configs that would run code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from bnrank.engine.errors import CorruptCheckpointError, NetworkDefError
from bnrank.engine.fitting import load_checkpoint
from bnrank.engine.recognition import resolve_architecture

from . import makers as mk


@pytest.mark.parametrize(
    ("network_def", "cls", "zipped"),
    [
        (mk.SEGRESNET_DEF, "SegResNet", False),
        (mk.SEGRESNET_DEF, "SegResNet", True),
        (mk.SWINUNETR_DEF, "SwinUNETR", True),  # SwinUNETR builds on the CPU only (seconds): one form is enough
    ],
    ids=["SegResNet-folder", "SegResNet-zip", "SwinUNETR-zip"],
)
def test_bundle_loads_weight_for_weight(tmp_path: Path, network_def: dict[str, Any], cls: str, zipped: bool) -> None:
    bundle = mk.write_bundle(tmp_path, network_def)
    expected = torch.load(bundle / "models" / "model.pt", weights_only=True)
    path = mk.zip_folder(bundle, tmp_path / "bundle.zip") if zipped else bundle
    model, report = load_checkpoint(path)
    assert report.format == "monai_bundle" and report.architecture.startswith(f"monai:{cls}@")
    assert type(model).__name__ == cls
    assert report.matched_fraction == 1.0 and not report.unexpected
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert report.source["name"] == "tiny_bundle" and report.source["config"].endswith("configs/inference.json")
    assert report.source["network_def"]["spatial_dims"] == 3  # "@spatial_dims" resolved to the config's literal
    # the architecture is found again by the name the report gives (how a ranking builds its control)
    arch, _ = resolve_architecture({}, report.architecture)
    assert arch.name == report.architecture


def _with_def(tmp_path: Path, network_def: Any, marker: Path) -> Path:
    bundle = mk.write_bundle(tmp_path, mk.SEGRESNET_DEF)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"] = network_def
    config["evil"] = f"$open({str(marker)!r}, 'w').write('ran')"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    return bundle


EXPRESSION = r"expressions \('\$...'\) are not evaluated"


@pytest.mark.parametrize(
    ("network_def", "message"),
    [
        ({"_target_": "torch.nn.Identity"}, "_target_ 'torch.nn.Identity' is not allowed"),
        ({"_target_": "$__import__('os').system('true')"}, "is not allowed"),
        ({**mk.SEGRESNET_DEF, "init_filters": "$__import__('os').getpid()"}, EXPRESSION),
        ({**mk.SEGRESNET_DEF, "spatial_dims": "@evil"}, EXPRESSION),
        ({**mk.SEGRESNET_DEF, "act": {"_target_": "os.system", "command": "true"}}, "nested '_target_'"),
        ("$monai.networks.nets.SegResNet()", "is an expression"),
        ({**mk.SEGRESNET_DEF, "_requires_": "@evil"}, "is not supported"),
    ],
)
def test_bundle_configs_that_would_run_code_are_refused(tmp_path: Path, network_def: Any, message: str) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(NetworkDefError, match=message):
        load_checkpoint(_with_def(tmp_path, network_def, marker))
    assert not marker.exists()


def test_bundle_without_weights_says_what_is_missing(tmp_path: Path) -> None:
    bundle = mk.write_bundle(tmp_path, mk.SEGRESNET_DEF)
    (bundle / "models" / "model.pt").rename(bundle / "models" / "model.ts")
    with pytest.raises(CorruptCheckpointError, match=r"without models/model.pt \(models/model.ts"):
        load_checkpoint(bundle)
