"""`--verify K`: fine-tune the top K and the bottom entry and compare their order with the ranking's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bnrank.engine.architectures import build_model
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.entries import RankEntry
from bnrank.engine.ranking import Candidate, rank_candidates
from bnrank.engine.verify import (
    VERIFY_LR,
    VERIFY_STEPS,
    control_candidates,
    finetune_candidate,
    format_verify,
    verify_config,
    verify_ranking,
)

from .tiny import WIDTH, blob_task, small_config


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on the shared 2-core machine two threads made these tiny runs 10-40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _candidates(tmp_path: Path, n: int) -> list[Candidate]:
    cands = []
    for i in range(n):
        torch.manual_seed(i)
        model = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
        cands.append(Candidate(f"c{i}", save_weights(model, tmp_path / f"c{i}.safetensors")))
    return cands


def test_finetune_trains_every_parameter(tmp_path: Path) -> None:
    task = blob_task()
    cand = _candidates(tmp_path, 1)[0]
    result = finetune_candidate(cand, task, small_config(max_steps=2, val_every=2))
    assert result.steps == 2 and 0.0 <= result.score <= 1.0


def test_finetune_decays_on_a_cosine_unless_asked_not_to(tmp_path: Path) -> None:
    task = blob_task()
    cand = _candidates(tmp_path, 1)[0]
    config = verify_config(small_config(max_steps=3, val_every=1, score_window=1), steps=3, lr=3e-2)
    decayed = finetune_candidate(cand, task, config)
    constant = finetune_candidate(cand, task, config, cosine=False)
    assert decayed.steps == constant.steps == 3
    assert decayed.final_loss != constant.final_loss  # same first step, then smaller steps
    # verify validates only where its score is taken: the last validation (score_window 1), not every step
    assert [p["step"] for p in decayed.curve if "score" in p] == [3]


def test_verify_budget_is_the_benchmarks_converged_one() -> None:
    """--verify fine-tunes as the benchmark's converged ground truth does (where seeds agree with each other)."""
    prereg = json.loads((Path(__file__).resolve().parents[2] / "bench" / "preregistration.json").read_text())
    gt = prereg["ground_truth"]
    assert (VERIFY_STEPS, VERIFY_LR, gt["schedule"]) == (gt["budgets"][-1], gt["lr"], "cosine")


def test_verify_checks_top_k_and_bottom(tmp_path: Path) -> None:
    task = blob_task()
    cands = _candidates(tmp_path, 3)
    config = small_config(max_steps=2, val_every=2)
    result = rank_candidates(cands, task, config)  # 3 candidates + the control = 4 ranked entries
    vconfig = verify_config(config, steps=2, lr=3e-3)
    assert vconfig.max_steps == 2 and vconfig.lr == 3e-3 and vconfig.seed == config.seed
    report = verify_ranking(result, cands, task, vconfig, k=1)
    ranks = [row["rank"] for row in report["checked"]]
    assert ranks == [1, 4]  # the top 1 and the bottom
    assert all(row["status"] == "ok" and row["finetuned_score"] is not None for row in report["checked"])
    assert sorted(row["finetuned_rank"] for row in report["checked"]) == [1, 2]
    assert report["concordant_pairs"][1] == 1
    assert report["agrees"] == (report["concordant_pairs"][0] == 1)
    assert isinstance(report["same_top1"], bool) and isinstance(report["bottom_stays_last"], bool)
    assert "order agrees" in format_verify(report)
    # K covering every entry checks each once (no duplicate bottom).
    everything = verify_ranking(result, cands, task, vconfig, k=10)
    assert len(everything["checked"]) == 4
    assert len({row["checkpoint"] for row in everything["checked"]}) == 4


def test_control_candidates_mirror_the_ranking() -> None:
    entries = [
        RankEntry("a", architecture="unet3d", load_report={"build_kwargs": {"width": 4, "in_channels": 1}}),
        RankEntry("b", architecture="unet3d", load_report={"build_kwargs": {"width": 4, "in_channels": 1}}),
        RankEntry("c", architecture="unet3d", load_report={"build_kwargs": {"width": 8, "in_channels": 1}}),
    ]
    cands = [Candidate("a", Path("a")), Candidate("b", Path("b")), Candidate("c", Path("c"))]
    controls = control_candidates(entries, cands)
    assert [c.build_kwargs for c in controls] == [{"width": 4}, {"width": 8}]
    assert all(c.is_control for c in controls)
