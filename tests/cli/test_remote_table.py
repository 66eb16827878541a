"""`bnrank remote` prints a served ranking with `bnrank rank`'s table, read from the API's JSON alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVED = {
    "stability": {"at_fraction": 0.5, "kendall_tau": 1.0, "same_top1": True},
    "ties": {"top_group": ["good.safetensors", "other.safetensors"], "p_top_is_best": 0.61},
    "entries": [
        {
            "name": "good.safetensors", "status": "ok", "rank": 1, "score": 0.8123, "dice_per_class": {"brain": 0.8123},
            "gamma": {"after_bn": {"share_below": 0.25, "change": {"mean_abs_delta": 0.0321}}}, "curve": [],
            "steps": 20, "seconds": 3.5, "error": None, "is_control": False, "architecture": "unet3d",
            "norm_kinds": ["batch"], "trained_parameters": 1234, "tie_group": 1, "format": "safetensors",
        },
        {
            "name": "graph.onnx", "status": "ok", "rank": 2, "score": 0.7, "dice_per_class": {"brain": 0.7},
            "gamma": {}, "curve": [], "steps": 20, "seconds": 3.0, "error": None, "is_control": False,
            "architecture": "onnx:0123abcd", "norm_kinds": ["batch"], "format": "onnx",
            "conversion": {
                "operators": {"Conv": 18, "BatchNormalization": 14, "Relu": 14}, "norms": {"BatchNormalization": 14},
                "norms_without_affine": 0, "head": ["out_tr_final_conv"], "head_rule": "unet3d's head", "opset": 17,
            },
        },
        {
            "name": "broken.pt", "status": "failed", "rank": None, "score": None, "dice_per_class": {}, "gamma": {},
            "curve": [], "steps": 0, "seconds": 0.1, "error": "unsafe pickle", "is_control": False,
            "architecture": None,
        },
    ],
}
PRINT = """
import json, sys
from bnrank.cli.remote import print_ranking
print_ranking(json.loads(sys.argv[1]))
loaded = [m for m in ("torch", "scipy", "sqlalchemy", "service") if m in sys.modules]
print("LOADED", loaded)
"""


def test_a_served_ranking_prints_as_the_local_table_without_torch_or_the_service() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PRINT, json.dumps(SERVED)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[-1] == "LOADED []"
    top = next(line for line in lines if line.rstrip().endswith("good.safetensors"))
    assert top.split()[:3] == ["1", "0.812", "0.812"]  # rank, score, the class's Dice
    assert " 25.0%" in top and "0.0321" in top and "1,234" in top and "batch" in top
    assert "   -  FAILED  broken.pt: unsafe pickle" in done.stdout
    assert "formats: safetensors ×1, onnx ×1" in done.stdout  # each candidate's source, and a graph's conversion
    assert "conversion of graph.onnx: ONNX graph, op set 17: 46 nodes (Conv 18, BatchNormalization 14, Relu 14)" in (
        done.stdout
    )
    assert "norms: BatchNormalization 14; head: out_tr_final_conv" in done.stdout
    assert "ties: the top 2 are tied at this budget (good, other); P(rank 1 is best) = 0.61" in done.stdout
    assert "Kendall τ = 1.00, same top-1: yes" in done.stdout
