"""γ statistics, the patch schedule, BN-only training and ranking on tiny synthetic tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bnrank.engine.architectures import build_model, get_architecture
from bnrank.engine.bn_only import bn_only_evaluate, bn_only_parameters, reinit_head
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.errors import TrainingError
from bnrank.engine.gamma import HIST_EDGES, gamma_stats
from bnrank.engine.ranking import Candidate, rank_candidates
from bnrank.engine.training import PatchSchedule, TaskData, TrainConfig, Volume, train

WIDTH = 4


def blob_task(n: int = 4, shape=(20, 20, 20), seed: int = 0) -> TaskData:
    """Bright spheres (class 1) and dim cubes (class 2) on noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    vols = []
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for i in range(n):
        label = np.zeros(shape, np.uint8)
        c = rng.integers(6, 14, 3)
        label[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < 16] = 1
        a = rng.integers(1, 6, 3)
        label[a[0] : a[0] + 4, a[1] : a[1] + 4, a[2] : a[2] + 4] = 2
        image = (label == 1) * 2.0 + (label == 2) * 1.0 + rng.normal(0, 0.3, shape)
        vols.append(Volume(f"case_{i}", image[None].astype(np.float32), label))
    return TaskData(vols[:-1], vols[-1:], ["background", "sphere", "cube"])


def small_config(**kw) -> TrainConfig:
    base = {
        "max_steps": 6,
        "patch_size": (16, 16, 16),
        "batch_size": 2,
        "val_every": 3,
        "patience": 5,
        "lr": 1e-2,
        "precision": "fp32",
    }
    return TrainConfig(**{**base, **kw})


def test_gamma_stats_counts_and_fixed_bins() -> None:
    model = build_model("unet3d", in_channels=1, out_channels=2, width=WIDTH)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    with torch.no_grad():
        bns[0].weight.fill_(0.01)  # a whole layer switched off
    stats = gamma_stats(model)
    total = sum(m.num_features for m in bns)
    assert stats["n_layers"] == len(bns)
    assert stats["summary"]["count"] == total
    assert stats["summary"]["n_below"] == bns[0].num_features
    assert stats["summary"]["share_below"] == pytest.approx(bns[0].num_features / total)
    assert sum(stats["histogram"]["counts"]) == total
    assert len(stats["histogram"]["counts"]) == len(HIST_EDGES) - 1
    assert stats["histogram"]["counts"][0] == bns[0].num_features  # 0.01 falls in [0, 0.05)
    assert stats["layers"][0]["share_below"] == 1.0
    assert stats["layers"][1]["share_below"] == 0.0


def test_patch_schedule_is_a_function_of_seed_and_data() -> None:
    task = blob_task()
    a = PatchSchedule(task.train, (16, 16, 16), 2, seed=3)
    b = PatchSchedule(task.train, (16, 16, 16), 2, seed=3)
    c = PatchSchedule(task.train, (16, 16, 16), 2, seed=4)
    xa, xb, xc = (s.next_batch()[0] for s in (a, b, c))
    assert torch.equal(xa, xb)
    assert not torch.equal(xa, xc)


def test_patch_larger_than_volume_is_padded() -> None:
    task = blob_task(shape=(12, 12, 12))
    x, y = PatchSchedule(task.train, (16, 16, 16), 2, seed=0).next_batch()
    assert x.shape == (2, 1, 16, 16, 16) and y.shape == (2, 1, 16, 16, 16)
    model = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    result = train(model, model.parameters(), task, small_config(max_steps=2, val_every=2))
    assert result.steps == 2 and len(result.curve) == 1


def test_bn_only_changes_only_bn_and_head() -> None:
    task = blob_task()
    arch = get_architecture("unet3d")
    model = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result, g_before, g_after = bn_only_evaluate(model, arch, task, small_config())
    bn_names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm3d)}
    for name, p in model.named_parameters():
        owner = name.rsplit(".", 1)[0]
        changed = not torch.equal(p.detach(), before[name])
        if owner in bn_names or name.startswith("out_tr."):
            assert changed, f"{name} should have trained"
        else:
            assert not changed, f"{name} is frozen but changed"
    assert g_before["summary"]["mean"] == pytest.approx(1.0)  # fresh BN γ
    assert g_after["summary"]["mean"] != pytest.approx(1.0)
    assert result.steps == 6 and [p["step"] for p in result.curve] == [3, 6]
    assert 0.0 <= result.score <= 1.0
    assert set(result.dice_per_class) == {"sphere", "cube"}


def test_bn_only_trainable_set_excludes_convs() -> None:
    arch = get_architecture("unet3d")
    model = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    params = bn_only_parameters(model, arch)
    n_bn = sum(m.weight.numel() * 2 for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d))
    n_head = sum(p.numel() for p in model.out_tr.parameters())
    assert sum(p.numel() for p in params) == n_bn + n_head
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.endswith("conv1.weight"))


def test_every_candidate_gets_the_same_head() -> None:
    arch = get_architecture("unet3d")
    torch.manual_seed(1)
    a = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    torch.manual_seed(2)
    b = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    reinit_head(a, arch, seed=7)
    reinit_head(b, arch, seed=7)
    assert torch.equal(a.out_tr.final_conv.weight, b.out_tr.final_conv.weight)
    assert not torch.equal(a.down_tr64.ops[0].conv1.weight, b.down_tr64.ops[0].conv1.weight)


def test_nan_loss_fails_with_the_step() -> None:
    task = blob_task()
    model = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    task.train[0].image[:] = np.nan
    task.train[1].image[:] = np.nan
    task.train[2].image[:] = np.nan
    with pytest.raises(TrainingError, match="at step 1"):
        train(model, model.parameters(), task, small_config())


def test_same_inputs_same_result() -> None:
    """Fair ranking needs determinism: the same candidate twice gives the same curve."""
    task = blob_task()
    arch = get_architecture("unet3d")
    curves = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
        curves.append(bn_only_evaluate(model, arch, task, small_config())[0].curve)
    assert [p["dice"] for p in curves[0]] == pytest.approx([p["dice"] for p in curves[1]], abs=1e-6)


def test_ranking_survives_a_broken_candidate(tmp_path: Path) -> None:
    task = blob_task()
    good = save_weights(
        build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH), tmp_path / "good.safetensors"
    )
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:1000])
    poisoned = tmp_path / "nan.safetensors"
    state = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH).state_dict()
    state["down_tr64.ops.0.bn1.weight"][:] = float("nan")
    save_file(state, str(poisoned))
    cands = [Candidate("truncated", truncated), Candidate("good", good), Candidate("nan", poisoned)]
    result = rank_candidates(cands, task, small_config(max_steps=3, val_every=3))
    by_name = {e.checkpoint: e for e in result.entries}
    assert by_name["good"].status == "ok" and by_name["good"].rank is not None
    assert by_name["truncated"].status == "failed" and "truncated.safetensors" in by_name["truncated"].error
    assert by_name["nan"].status == "failed" and "NaN" in by_name["nan"].error
    control = [e for e in result.entries if e.is_control]
    assert len(control) == 1 and control[0].status == "ok"
    assert sorted(e.rank for e in result.entries if e.rank) == [1, 2]
    assert result.to_dict()["entries"][0]["rank"] == 1


def test_auto_precision_uses_bf16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Emulated bf16 (plain AVX512) ran twice as slow as fp32: `auto` must not pick it on such a CPU."""
    from bnrank.engine import training

    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: False)
    assert not training.use_bf16(TrainConfig(precision="auto", device="cpu"))
    assert training.use_bf16(TrainConfig(precision="bf16", device="cpu"))  # asked for explicitly
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: True)
    assert training.use_bf16(TrainConfig(precision="auto", device="cpu")) == torch.backends.mkldnn.is_available()
    assert not training.use_bf16(TrainConfig(precision="fp32", device="cpu"))
