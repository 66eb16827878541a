"""Network alchemy: conv→BN pairing, kernel re-initialisation, R_γ, the phases, k-fold and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bnrank.cli import main
from bnrank.engine import alchemy as alchemy_mod
from bnrank.engine.alchemy import (
    AlchemyError,
    AlchemyOptions,
    alchemy_checkpoint,
    alchemy_kfold,
    find_conv_bn_pairs,
    fold_path,
    modify,
    r_gamma,
    run_alchemy,
    select_redundant,
)
from bnrank.engine.architectures import Architecture, architecture_from_network_def, build_model, get_architecture
from bnrank.engine.checkpoints import load_checkpoint, save_weights
from bnrank.engine.errors import BNRankError, TrainingError
from bnrank.engine.folds import FoldError, fold_tasks, kfold_indices
from bnrank.engine.gamma import bn_layers
from tests.engine.test_bn_only import WIDTH, blob_task, small_config
from tests.engine.volumes import write_nnunet_dataset

NARROW = {
    "unet3d": {"width": WIDTH},
    "medicalnet_resnet10": {"width": 8},
    "monai_unet": {},
}


def _build(name: str, out_channels: int = 3, seed: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, in_channels=1, out_channels=out_channels, **NARROW[name])


# ------------------------------------------------------------------------------------------- pairing


@pytest.mark.parametrize("name", sorted(NARROW))
def test_every_bn_is_paired_with_the_conv_feeding_it(name: str) -> None:
    model = _build(name)
    rng = torch.get_rng_state()
    pairs, skipped = find_conv_bn_pairs(model, (1, 1, 16, 16, 16))
    assert torch.equal(rng, torch.get_rng_state())  # tracing leaves the global RNG alone
    assert skipped == []
    assert [p.bn for p in pairs] == [n for n, _ in bn_layers(model)]
    modules = dict(model.named_modules())
    for p in pairs:
        assert modules[p.conv].out_channels == modules[p.bn].num_features
        assert p.conv.rpartition(".")[0] == p.bn.rpartition(".")[0].removesuffix(".adn")  # siblings
    by_bn = {p.bn: p for p in pairs}
    if name == "unet3d":
        assert by_bn["down_tr64.ops.0.bn1"].conv == "down_tr64.ops.0.conv1"
        assert by_bn["up_tr64.ops.1.bn1"].conv == "up_tr64.ops.1.conv1"
    if name == "medicalnet_resnet10":
        assert by_bn["layer2.0.downsample.1"].conv == "layer2.0.downsample.0"
        assert by_bn["conv_seg.1"].conv_type == "ConvTranspose3d" and by_bn["conv_seg.1"].conv == "conv_seg.0"
    if name == "monai_unet":
        assert any(p.conv_type == "ConvTranspose3d" for p in pairs)
    # the trace leaves running statistics alone
    fresh = _build(name)
    for (_, a), (_, b) in zip(bn_layers(model), bn_layers(fresh), strict=True):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)


class _Odd(nn.Module):
    """BNs that no conv feeds directly: on the raw input, after an in-place ReLU, after a concat."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm3d(1)
        self.conv_a = nn.Conv3d(1, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm3d(4)
        self.conv_b = nn.Conv3d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn_b = nn.BatchNorm3d(4)
        self.bn_cat = nn.BatchNorm3d(8)
        self.head = nn.Conv3d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bn_a(self.conv_a(self.bn_in(x)))
        b = self.bn_b(self.relu(self.conv_b(a)))
        return self.head(self.bn_cat(torch.cat([a, b], 1)))


def test_bns_without_a_direct_conv_are_skipped_with_a_reason() -> None:
    pairs, skipped = find_conv_bn_pairs(_Odd(), (1, 1, 8, 8, 8))
    assert [(p.bn, p.conv) for p in pairs] == [("bn_a", "conv_a")]
    reasons = {s.bn: s.reason for s in skipped}
    assert set(reasons) == {"bn_in", "bn_b", "bn_cat"}
    assert all("conv" in r for r in reasons.values())


# -------------------------------------------------------------------------------------- modification


def _mark(model: nn.Module, bn_name: str, channels: list[int], value: float = 1e-3) -> None:
    bn = dict(model.named_modules())[bn_name]
    with torch.no_grad():
        bn.weight[channels] = value
        bn.bias[channels] = 0.3
        bn.running_mean[channels] = 0.7
        bn.running_var[channels] = 2.0


@pytest.mark.parametrize(
    ("name", "bn_name", "conv_name", "transposed"),
    [
        ("unet3d", "down_tr128.ops.0.bn1", "down_tr128.ops.0.conv1", False),
        ("medicalnet_resnet10", "conv_seg.1", "conv_seg.0", True),
        ("monai_unet", "model.1.submodule.2.0.adn.N", "model.1.submodule.2.0.conv", True),
    ],
)
def test_only_the_marked_filters_and_bn_channels_change(name, bn_name, conv_name, transposed) -> None:
    model = _build(name)
    with torch.no_grad():  # every γ comfortably above the threshold, except the marked ones
        for _, bn in bn_layers(model):
            bn.weight.uniform_(0.5, 1.5)
    marked = [0, 2]
    _mark(model, bn_name, marked)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    selection, warnings = select_redundant(model, threshold=0.05)
    assert warnings == [] and selection.channels == {bn_name: marked}
    pairs, skipped = find_conv_bn_pairs(model, (1, 1, 16, 16, 16))
    report = modify(model, selection, pairs, skipped, seed=0)
    assert report["reinitialised"] == 2
    layer = next(r for r in report["layers"] if r["bn"] == bn_name)
    assert layer["conv"] == conv_name and layer["reinitialised"] == 2 and layer["indices"] == marked
    assert sum(r["reinitialised"] for r in report["layers"]) == 2

    after = model.state_dict()
    w0, w1 = before[f"{conv_name}.weight"], after[f"{conv_name}.weight"]
    dim = 1 if transposed else 0
    keep = [c for c in range(w0.shape[dim]) if c not in marked]
    for c in marked:
        assert not torch.equal(w0.select(dim, c), w1.select(dim, c)), f"filter {c} was not re-initialised"
    assert torch.equal(w0.index_select(dim, torch.tensor(keep)), w1.index_select(dim, torch.tensor(keep)))
    fan_in = nn.init._calculate_fan_in_and_fan_out(w1)[0]
    new = torch.stack([w1.select(dim, c) for c in marked])
    assert new.std().item() == pytest.approx((2.0 / fan_in) ** 0.5, rel=0.35)  # Kaiming scale
    if f"{conv_name}.bias" in after:
        assert torch.all(after[f"{conv_name}.bias"][marked] == 0)
        assert torch.equal(after[f"{conv_name}.bias"][keep], before[f"{conv_name}.bias"][keep])
    for key, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        full = f"{bn_name}.{key}"
        assert torch.all(after[full][marked] == value), full
        assert torch.equal(after[full][keep], before[full][keep]), full
    touched = {f"{conv_name}.weight", f"{conv_name}.bias"} | {f"{bn_name}.{k}" for k in ("weight", "bias")}
    touched |= {f"{bn_name}.running_mean", f"{bn_name}.running_var"}
    for key in before:
        if key not in touched:
            assert torch.equal(before[key], after[key]), f"{key} changed"


def test_selection_by_fraction_takes_the_smallest_gammas() -> None:
    model = _build("unet3d")
    with torch.no_grad():
        for _, bn in bn_layers(model):
            bn.weight.uniform_(0.5, 1.5)
    _mark(model, "down_tr64.ops.1.bn1", [1, 3], value=0.2)
    total = sum(bn.num_features for _, bn in bn_layers(model))
    selection, _ = select_redundant(model, fraction=2 / total)
    assert selection.channels == {"down_tr64.ops.1.bn1": [1, 3]} and selection.rule == "fraction"
    with pytest.raises(AlchemyError, match="not both"):
        select_redundant(model, threshold=0.1, fraction=0.1)
    with pytest.raises(AlchemyError, match="fraction"):
        select_redundant(model, fraction=0.0)


def test_a_threshold_that_marks_nothing_says_so() -> None:
    selection, warnings = select_redundant(_build("unet3d"))  # fresh: every γ = 1
    assert selection.rule == "threshold" and selection.threshold == 0.05 and selection.marked == 0
    assert selection.channels == {} and selection.min_abs_gamma == 1.0
    assert len(warnings) == 1 and "no kernel is marked" in warnings[0] and "--fraction" in warnings[0]


def test_a_threshold_that_marks_every_kernel_is_capped_with_a_warning() -> None:
    model = _build("unet3d")
    selection, warnings = select_redundant(model, threshold=100.0)
    total = selection.total
    assert selection.marked == total and selection.capped
    assert selection.kept_after_cap == total // 2
    assert sum(len(v) for v in selection.channels.values()) == total // 2
    assert len(warnings) == 1 and "max share 50%" in warnings[0]


# ----------------------------------------------------------------------------------------------- R_γ


def test_r_gamma_gradient_raises_the_mean_and_shrinks_the_spread() -> None:
    model = nn.Sequential(nn.Conv3d(1, 3, 1), nn.BatchNorm3d(3), nn.Conv3d(3, 3, 1), nn.BatchNorm3d(3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.1, 0.5, 1.0]))
        model[3].weight.copy_(torch.tensor([1.5, 0.2, 0.8]))
    r = r_gamma(model, alpha=0.1, beta=1.0)
    r.backward()
    g = torch.cat([model[1].weight.detach(), model[3].weight.detach()])
    grad = torch.cat([model[1].weight.grad, model[3].weight.grad])
    expected = -0.1 / 6 + (g - g.mean()) / (6 * g.std(unbiased=False))
    assert torch.allclose(grad, expected, atol=1e-5)
    assert grad.sum().item() == pytest.approx(-0.1, abs=1e-5)  # along (1, ..., 1): pushes the mean up
    assert torch.all(torch.sign(grad + 0.1 / 6) == torch.sign(g - g.mean()))  # spread term: towards mean
    with torch.no_grad():  # one gradient-descent step on R_γ alone
        for bn in (model[1], model[3]):
            bn.weight -= 0.5 * bn.weight.grad
    g2 = torch.cat([model[1].weight.detach(), model[3].weight.detach()])
    assert g2.mean() > g.mean() and g2.std() < g.std()
    # a fresh network has every γ = 1: the gradient must stay finite there (std = 0)
    fresh = nn.Sequential(nn.Conv3d(1, 3, 1), nn.BatchNorm3d(3))
    r_gamma(fresh).backward()
    assert torch.isfinite(fresh[1].weight.grad).all()


# ---------------------------------------------------------------------------------------------- runs


def test_alchemy_runs_every_phase_and_reports_them() -> None:
    task = blob_task()
    arch = get_architecture("unet3d")
    model = _build("unet3d")
    calls: list[tuple[int, int, str]] = []
    opts = AlchemyOptions(fraction=0.1, identify_steps=3)
    result = run_alchemy(
        model, arch, task, small_config(max_steps=4, val_every=2), opts, on_progress=lambda *a: calls.append(a)
    )
    assert result.mode == "alchemy" and result.options["maximization"] is True
    assert result.identification["steps"] == 3
    assert set(result.gamma) == {"raw", "after_identification", "after_modification", "after_alchemy"}
    total = result.selection["total"]
    assert result.modification["reinitialised"] == int(0.1 * total)
    assert result.gamma["after_modification"]["summary"]["count"] == total
    assert set(result.r_gamma) == {"before", "after"}
    assert set(result.dice_per_class) == {"sphere", "cube"} and 0.0 <= result.score <= 1.0
    assert result.steps == 4 and len(result.curve) == 2
    # progress runs through all phases on one scale
    assert all(total_ == 3 + 4 for _, total_, _ in calls)
    messages = " ".join(m for *_, m in calls)
    assert "[identification]" in messages and "[modification]" in messages and "[maximization" in messages
    assert [s for s, _, _ in calls] == sorted(s for s, _, _ in calls)
    assert all(p.requires_grad for p in model.parameters())  # every parameter was fine-tuned


def test_modes_and_switches(tmp_path: Path) -> None:
    task = blob_task()
    ckpt = save_weights(_build("unet3d"), tmp_path / "c.safetensors")
    config = small_config(max_steps=2, val_every=2)
    scratch, _ = alchemy_checkpoint(ckpt, task, config, AlchemyOptions(mode="scratch"))
    again, _ = alchemy_checkpoint(ckpt, task, config, AlchemyOptions(mode="scratch"))
    assert scratch.identification is None and scratch.modification is None
    assert scratch.options["maximization"] is False and set(scratch.r_gamma) == {"before", "after"}
    assert scratch.score == pytest.approx(again.score)  # seeded
    assert set(scratch.gamma) == {"raw", "after_training"}

    ft, _ = alchemy_checkpoint(ckpt, task, config, AlchemyOptions(mode="finetune", maximization=True))
    assert ft.options["maximization"] is True and ft.identification is None
    assert set(ft.r_gamma) == {"before", "after"}
    plain, _ = alchemy_checkpoint(
        ckpt, task, config, AlchemyOptions(maximization=False, modification=False, identify_steps=2)
    )
    assert plain.identification is not None and plain.modification is None
    noid, _ = alchemy_checkpoint(ckpt, task, config, AlchemyOptions(identification=False, fraction=0.05))
    assert noid.identification is None and noid.modification["reinitialised"] > 0

    # scratch starts from a seeded fresh draw of the architecture, not from the checkpoint
    key = "down_tr64.ops.0.conv1.weight"
    raw = load_checkpoint(ckpt, out_channels=3)[0].state_dict()[key]
    start = alchemy_mod.prepare_model(ckpt, task, "scratch", 0)[0].state_dict()[key]
    assert not torch.equal(start, raw)
    assert torch.equal(start, alchemy_mod.prepare_model(ckpt, task, "scratch", 0)[0].state_dict()[key])
    assert torch.equal(alchemy_mod.prepare_model(ckpt, task, "finetune", 0)[0].state_dict()[key], raw)


def test_networks_without_batchnorm_are_refused() -> None:
    task = blob_task()

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv3d(1, 4, 3, padding=1)
            self.head = nn.Conv3d(4, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.body(x)))

    tiny = Architecture("tiny", "no BN", Tiny, ("head.",), lambda shapes: None)
    with pytest.raises(AlchemyError, match="needs BatchNorm"):
        run_alchemy(Tiny(), tiny, task, small_config())
    arch = architecture_from_network_def({"_target_": "UNet", "channels": [4, 8], "strides": [2], "norm": "instance"})
    model = arch.build(in_channels=1, out_channels=3, require_bn=False)
    with pytest.raises(AlchemyError, match="maximization"):
        run_alchemy(model, arch, task, small_config(), AlchemyOptions(mode="finetune", maximization=True))
    # plain fine-tuning needs no BN, and still works
    result = run_alchemy(Tiny(), tiny, task, small_config(max_steps=2, val_every=2), AlchemyOptions(mode="finetune"))
    assert result.steps == 2


def test_nan_during_maximization_fails_with_the_step_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    task = blob_task()
    ckpt = save_weights(_build("unet3d"), tmp_path / "c.safetensors")
    out = tmp_path / "out" / "w.safetensors"
    real = alchemy_mod.r_gamma
    calls = [0]

    def exploding(model: nn.Module, alpha: float = 0.1, beta: float = 1.0) -> torch.Tensor:
        calls[0] += 1  # call 1: R_γ before fine-tuning; call k + 1: training step k
        r = real(model, alpha, beta)
        return r * float("nan") if calls[0] == 4 else r

    monkeypatch.setattr(alchemy_mod, "r_gamma", exploding)
    with pytest.raises(TrainingError, match=r"maximization.*at step 3"):
        alchemy_checkpoint(ckpt, task, small_config(), AlchemyOptions(identify_steps=2, fraction=0.05), out=out)
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # not even a .partial file


def test_options_are_validated() -> None:
    with pytest.raises(AlchemyError, match="mode"):
        AlchemyOptions(mode="magic")
    with pytest.raises(AlchemyError, match="lam"):
        AlchemyOptions(lam=float("nan"))
    with pytest.raises(AlchemyError, match="not both"):
        AlchemyOptions(threshold=0.1, fraction=0.2)
    with pytest.raises(AlchemyError, match="fraction"):
        AlchemyOptions(fraction=1.5)
    with pytest.raises(AlchemyError, match="threshold"):
        AlchemyOptions(threshold=-1.0)
    with pytest.raises(AlchemyError, match="max_share"):
        AlchemyOptions(max_share=0.0)
    assert issubclass(AlchemyError, BNRankError) and issubclass(FoldError, BNRankError)


# --------------------------------------------------------------------------------------------- folds


@pytest.mark.parametrize(("n", "k"), [(2, 2), (5, 2), (7, 3), (10, 10), (12, 5)])
def test_folds_are_disjoint_and_cover_every_case(n: int, k: int) -> None:
    folds = kfold_indices(n, k, seed=3)
    assert len(folds) == k and all(folds)
    flat = [i for f in folds for i in f]
    assert sorted(flat) == list(range(n))  # covering, and no index twice (disjoint)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert folds == kfold_indices(n, k, seed=3)


def test_fold_tasks_hold_out_each_fold_once() -> None:
    task = blob_task(n=5)
    tasks = fold_tasks(task, 3, seed=0)
    every = sorted(v.case_id for v in [*task.train, *task.val])
    assert sorted(v.case_id for t in tasks for v in t.val) == every
    for t in tasks:
        assert not {v.case_id for v in t.train} & {v.case_id for v in t.val}
        assert sorted(v.case_id for v in [*t.train, *t.val]) == every


def test_too_many_folds_is_a_clear_error() -> None:
    with pytest.raises(FoldError, match=r"5 folds need at least 5 cases.*has 4"):
        fold_tasks(blob_task(n=4), 5, seed=0)
    with pytest.raises(FoldError, match="at least 2 folds"):
        kfold_indices(4, 1, seed=0)


def test_kfold_reports_each_fold_and_writes_per_fold_weights(tmp_path: Path) -> None:
    task = blob_task(n=4)
    ckpt = save_weights(_build("unet3d"), tmp_path / "c.safetensors")
    out = tmp_path / "w.safetensors"
    res = alchemy_kfold(
        ckpt, task, small_config(max_steps=2, val_every=2), AlchemyOptions(mode="finetune"), folds=2, out=out
    )
    d = res.to_dict()
    assert d["n_folds"] == 2 and len(d["dice_per_fold"]) == 2
    assert d["dice_mean"] == pytest.approx(np.mean(d["dice_per_fold"]))
    assert d["dice_std"] == pytest.approx(np.std(d["dice_per_fold"], ddof=1))
    val = [c for f in res.folds for c in f.val_cases]
    assert sorted(val) == sorted(v.case_id for v in [*task.train, *task.val])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors", "w.fold0.safetensors", "w.fold1.safetensors"]
    assert fold_path(out, 1) == tmp_path / "w.fold1.safetensors"
    load_checkpoint(fold_path(out, 0))


# ----------------------------------------------------------------------------------------------- CLI


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
