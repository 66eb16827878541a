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
from bnrank.engine.logme import (
    LogMEConfig,
    _column_evidence,
    head_features,
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
