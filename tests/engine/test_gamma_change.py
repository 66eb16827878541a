"""γ figures that separate candidates at ranking budgets: layer-relative share and change during training."""

from __future__ import annotations

import pytest
import torch

from bnrank.engine.architectures import get_architecture
from bnrank.engine.bn_only import bn_only_evaluate
from bnrank.engine.gamma import RELATIVE_THRESHOLD, gamma_stats, gamma_values
from tests.engine.tiny import blob_task, narrow_model, small_config


def test_share_below_relative_to_the_layer_finds_quiet_channels_the_absolute_threshold_misses() -> None:
    model = narrow_model("unet3d")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    with torch.no_grad():
        bns[0].weight.fill_(2.0)
        bns[0].weight[:1] = 0.1  # 5 % of the layer's median, but twice the absolute threshold
    stats = gamma_stats(model)
    total = sum(m.num_features for m in bns)
    assert stats["summary"]["share_below"] == 0.0
    assert stats["summary"]["relative_threshold"] == RELATIVE_THRESHOLD
    assert stats["summary"]["n_below_relative"] == 1
    assert stats["summary"]["share_below_relative"] == pytest.approx(1 / total)
    assert stats["layers"][0]["n_below_relative"] == 1 and stats["layers"][1]["n_below_relative"] == 0


def test_change_of_gamma_against_a_reference() -> None:
    model = narrow_model("unet3d")
    reference = gamma_values(model)
    assert "change" not in gamma_stats(model)["summary"]
    assert gamma_stats(model, reference=reference)["summary"]["change"]["mean_abs_delta"] == 0.0
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    with torch.no_grad():
        bns[0].weight.mul_(0.5)  # fresh γ = 1: every channel of the first layer shrinks by 0.5
    change = gamma_stats(model, reference=reference)["summary"]["change"]
    total = sum(m.num_features for m in bns)
    assert change["count"] == total
    assert change["mean_abs_delta"] == pytest.approx(0.5 * bns[0].num_features / total)
    assert change["max_abs_delta"] == pytest.approx(0.5)
    assert change["share_shrunk"] == pytest.approx(bns[0].num_features / total)
    assert change["wasserstein_abs"] == pytest.approx(change["mean_abs_delta"])  # every move is one way
    assert gamma_stats(model, reference=reference)["layers"][0]["change"]["mean_abs_delta"] == pytest.approx(0.5)


def test_bn_only_reports_the_change_during_training() -> None:
    model = narrow_model("unet3d")
    _, before, after = bn_only_evaluate(model, get_architecture("unet3d"), blob_task(), small_config(max_steps=3))
    assert "change" not in before["summary"]
    assert after["summary"]["change"]["mean_abs_delta"] > 0.0  # a few steps at lr 1e-2 move every γ a little
    assert after["summary"]["share_below"] == 0.0  # ... far too little for the absolute threshold


def test_the_change_reaches_the_entry_its_json_and_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    from bnrank.cli.local import print_ranking
    from bnrank.engine.entries import RankEntry, RankingResult

    moved = RankEntry("a", rank=1, score=0.5, gamma={"after_bn": {"summary": {"change": {"mean_abs_delta": 0.1234}}}})
    unmeasured = RankEntry("b", rank=2, score=0.4, gamma={"after_bn": {"summary": {"share_below": 0.0}}})
    assert (moved.gamma_change, unmeasured.gamma_change) == (0.1234, None)
    assert moved.to_dict()["gamma_change"] == 0.1234 and unmeasured.to_dict()["gamma_change"] is None
    print_ranking(RankingResult("d", [moved, unmeasured], {}, {}))
    header, _, first, second, *_ = capsys.readouterr().out.splitlines()
    column = header.index("|Δγ|")
    assert first[column - 3 : column + 4].strip() == "0.1234"
    assert second[column - 3 : column + 4].strip() == "-"
