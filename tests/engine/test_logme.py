"""LogME: the evidence math on features with a known answer, feature capture, and `rank --method logme`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bnrank.cli import main
from bnrank.engine.architectures import build_model, get_architecture
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.errors import TrainingError
from bnrank.engine.logme import (
    LogMEConfig,
    _column_evidence,
    head_features,
    labels_on_feature_grid,
    logme_classification,
    logme_evidence,
    logme_score,
    sample_balanced,
)

from .tiny import WIDTH, blob_task
from .volumes import write_nnunet_dataset


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on the shared 2-core machine two threads made these tiny runs 10-40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def exact_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y | 0, β⁻¹ I + α⁻¹ F Fᵀ), computed directly (small N only)."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    return float(-0.5 * (n * np.log(2 * np.pi) + logdet + y @ np.linalg.solve(cov, y)))


def test_evidence_is_the_marginal_likelihood_at_its_maximum() -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(60, 5))
    y = f @ rng.normal(size=5) + rng.normal(0, 0.5, size=60)
    sigma, v = np.linalg.eigh(f.T @ f)
    per_n, alpha, beta = _column_evidence(y, f, sigma, v, f.T @ y)
    assert per_n * 60 == pytest.approx(exact_log_evidence(f, y, alpha, beta), rel=1e-3)
    # The fixed point is a maximum: nudging α or β lowers the evidence.
    best = exact_log_evidence(f, y, alpha, beta)
    for da, db in ((1.5, 1), (1 / 1.5, 1), (1, 1.5), (1, 1 / 1.5)):
        assert exact_log_evidence(f, y, alpha * da, beta * db) < best


def test_linearly_informative_features_beat_noise() -> None:
    rng = np.random.default_rng(1)
    n, k = 600, 3
    labels = rng.integers(0, k, n)
    onehot = np.eye(k)[labels]
    informative = np.concatenate([onehot @ rng.normal(size=(k, 4)), rng.normal(size=(n, 4))], 1)
    informative += rng.normal(0, 0.1, informative.shape)
    noise = rng.normal(size=(n, 8))
    good = logme_classification(informative, labels, k)
    bad = logme_classification(noise, labels, k)
    assert np.all(good > bad)
    # Partly informative features land in between.
    half = np.concatenate([onehot @ rng.normal(size=(k, 2)) + rng.normal(0, 1.0, (n, 2)), rng.normal(size=(n, 6))], 1)
    assert bad.mean() < logme_classification(half, labels, k).mean() < good.mean()


def test_evidence_shapes_and_missing_classes() -> None:
    rng = np.random.default_rng(2)
    f = rng.normal(size=(50, 3))
    assert logme_evidence(f, rng.normal(size=50)).shape == (1,)
    per_class = logme_classification(f, np.zeros(50, int), 3)
    assert np.isfinite(per_class[0]) and np.isnan(per_class[1:]).all()
    with pytest.raises(ValueError):
        logme_evidence(f, rng.normal(size=49))


def test_balanced_sampling_caps_every_class() -> None:
    labels = np.array([0] * 1000 + [1] * 30 + [2] * 5)
    idx = sample_balanced(labels, 3, 50, np.random.default_rng(0))
    counts = np.bincount(labels[idx], minlength=3)
    assert counts.tolist() == [50, 30, 5]


def test_head_features_are_the_decoder_output_and_leave_bn_untouched() -> None:
    task = blob_task()
    arch = get_architecture("unet3d")
    torch.manual_seed(0)
    model = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = LogMEConfig(n_batches=2, per_class=60, patch_size=(16, 16, 16), precision="fp32")
    feats, labels = head_features(model, arch, task, config)
    assert feats.shape[1] == 2 * WIDTH  # the input of out_tr.final_conv
    assert feats.shape[0] == len(labels) and set(np.unique(labels)) <= {0, 1, 2}
    assert np.bincount(labels, minlength=3).max() <= 60
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"
    result = logme_score(model, arch, task, config)
    assert np.isfinite(result.score) and set(result.per_class) == {"background", "sphere", "cube"}
    again = logme_score(model, arch, task, config)
    assert again.score == pytest.approx(result.score)  # seeded: same patches, same voxels


def test_labels_go_to_the_feature_grid_at_cell_centres() -> None:
    labels = torch.arange(24).reshape(1, 24, 1, 1).expand(2, 24, 8, 8)
    coarse = labels_on_feature_grid(labels, (3, 2, 8))
    assert coarse.shape == (2, 3, 2, 8) and coarse.dtype == labels.dtype
    assert coarse[0, :, 0, 0].tolist() == [4, 12, 20]  # centres of the cells [0, 8), [8, 16), [16, 24)
    assert torch.equal(labels_on_feature_grid(labels, (24, 8, 8)), labels)  # full resolution: unchanged
    odd = torch.randint(0, 3, (2, 20, 17, 9), generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(odd[:, None].double(), size=(6, 5, 4), mode="nearest-exact")
    assert torch.equal(labels_on_feature_grid(odd, (6, 5, 4)), expected[:, 0].long())


# The head's input is at 1/8 of the labels' resolution for MedicalNet (conv_seg starts before its
# transposed conv) and at 1/2 for MONAI UNet (its last up-block is the head); before the labels were
# brought to the feature grid, both failed with "LogME needs features at the output resolution".
COARSE_HEADS = {
    "medicalnet_resnet10": ({"width": 1}, 8 * 1, 8),  # width 1: the smallest the builder takes
    # BatchNorm, as registered; the head's input is the first level's skip (4) beside the path up (4)
    "monai_unet": ({"channels": (4, 8, 16), "strides": (2, 2)}, 4 + 4, 2),
}


@pytest.mark.parametrize("name", sorted(COARSE_HEADS))
def test_heads_on_coarse_features_get_a_finite_logme(name: str) -> None:
    options, channels, stride = COARSE_HEADS[name]
    task = blob_task(shape=(32, 32, 32))
    arch = get_architecture(name)
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, out_channels=3, **options)
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())
    config = LogMEConfig(n_batches=2, per_class=40, patch_size=(32, 32, 32), precision="fp32")
    feats, labels = head_features(model, arch, task, config)
    cells = config.batch_size * (32 // stride) ** 3  # feature cells per batch
    assert feats.shape[1] == channels and np.isfinite(feats).all()
    assert feats.shape[0] == len(labels) <= config.n_batches * cells
    assert np.bincount(labels, minlength=3).max() <= 40  # the per-class cap holds on the coarse grid
    result = logme_score(model, arch, task, config)
    assert np.isfinite(result.score) and result.n_features == channels
    assert result.per_class["background"] is not None
    assert result.per_class["sphere"] is not None  # foreground-centred patches put a cell centre on it


def test_coarse_features_are_the_head_input_with_centre_labels() -> None:
    """Every cell is kept when the cap exceeds the cells: the labels are those at the cell centres."""
    task = blob_task(shape=(32, 32, 32))
    arch = get_architecture("medicalnet_resnet10")
    torch.manual_seed(0)
    model = build_model("medicalnet_resnet10", in_channels=1, out_channels=3, width=1)
    config = LogMEConfig(n_batches=1, per_class=10_000, patch_size=(32, 32, 32), precision="fp32")
    feats, labels = head_features(model, arch, task, config)
    assert feats.shape == (2 * 4**3, 8)
    from bnrank.engine.training.patches import PatchSchedule

    schedule = PatchSchedule(task.train, config.patch_size, config.batch_size, config.seed, config.foreground_ratio)
    _, y = schedule.next_batch()
    assert np.array_equal(labels, y[:, 0, 4::8, 4::8, 4::8].reshape(-1).numpy())


def test_head_input_that_is_not_a_feature_map_fails_cleanly() -> None:
    with pytest.raises(TrainingError, match="different ranks"):
        labels_on_feature_grid(torch.zeros(2, 8, 8, 8, dtype=torch.long), (4, 4))


def test_rank_method_logme_and_both(tmp_path: Path, capsys) -> None:
    data = write_nnunet_dataset(tmp_path / "data", n_cases=4, shape=(16, 16, 16), n_labels=1)
    torch.manual_seed(0)
    a = save_weights(build_model("unet3d", in_channels=1, out_channels=2, width=WIDTH), tmp_path / "a.safetensors")
    torch.manual_seed(1)
    b = save_weights(build_model("unet3d", in_channels=1, out_channels=2, width=WIDTH), tmp_path / "b.safetensors")
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
    out = tmp_path / "logme.json"
    assert main(["rank", "--dataset", str(data), "--method", "logme", *small, "--json", str(out), str(a), str(b)]) == 0
    ranking = json.loads(out.read_text())
    assert ranking["method"] == "logme"
    assert len(ranking["entries"]) == 3  # two candidates and the control
    assert all(e["status"] == "ok" and e["steps"] == 0 and e["score"] is not None for e in ranking["entries"])
    assert sorted(e["rank"] for e in ranking["entries"]) == [1, 2, 3]
    assert "LogME" not in capsys.readouterr().out.splitlines()[0]

    out = tmp_path / "both.json"
    assert main(["rank", "--dataset", str(data), "--method", "both", *small, "--json", str(out), str(a), str(b)]) == 0
    ranking = json.loads(out.read_text())
    assert all(e["logme"] is not None and e["steps"] == 2 for e in ranking["entries"])
    assert set(ranking["logme"]) >= {"kendall_tau", "same_top1", "seconds"}
    printed = capsys.readouterr().out
    assert "LogME" in printed.splitlines()[0] and "LogME vs BN-only order" in printed
