"""Models Genesis pretraining: each corruption, volume reading and normalisation, a seeded run (CLI: tests/cli)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bnrank.engine.configs.pretrain import PretrainConfig
from bnrank.engine.errors import DatasetError
from bnrank.engine.pretrain import (
    bezier_curve,
    corrupt,
    flip,
    in_painting,
    load_volumes,
    local_pixel_shuffling,
    make_batch,
    nonlinear_intensity,
    out_painting,
    pretrain,
    sample_patch,
)

from .volumes import write_volume


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on the shared 2-core machine two threads made these tiny runs 10-40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def patch(seed: int = 0, shape=(1, 16, 16, 16)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_flip_moves_input_and_target_together() -> None:
    x = patch()
    a, b = flip(x, x.copy(), rng(), rate=1.0)
    assert np.array_equal(a, b) and np.array_equal(a, x[:, ::-1, ::-1, ::-1])
    a, _ = flip(x, x, rng(), rate=0.0)
    assert np.array_equal(a, x)


def test_local_pixel_shuffling_permutes_within_blocks() -> None:
    x = patch()
    out = local_pixel_shuffling(x, rng(), rate=1.0)
    assert out.shape == x.shape and not np.array_equal(out, x)
    big = patch(shape=(1, 30, 30, 30))
    moved = local_pixel_shuffling(big, rng(1), rate=1.0)
    changed = moved != big
    assert changed.any() and changed.mean() < 0.9  # local: most voxels stay or move a few voxels
    # Blocks are read from the input, as in the original: every output value is an input value (blocks
    # that overlap may repeat one), and the values do not drift.
    assert np.isin(moved, big).all()
    assert local_pixel_shuffling(x, rng(), rate=0.0) is x


def test_bezier_curve_runs_from_end_to_start() -> None:
    xs, ys = bezier_curve([[0, 0], [0.2, 0.8], [0.6, 0.3], [1, 1]], n=50)
    assert (xs[0], ys[0]) == pytest.approx((1, 1)) and (xs[-1], ys[-1]) == pytest.approx((0, 0))


def test_nonlinear_intensity_keeps_the_range_and_is_monotone() -> None:
    x = patch()
    lo, hi = x.min(), x.max()
    seen = set()
    for seed in range(12):
        out = nonlinear_intensity(x, rng(seed), rate=1.0)
        assert out.min() >= lo - 1e-5 and out.max() <= hi + 1e-5
        order = np.argsort(x.ravel())
        diffs = np.diff(out.ravel()[order])
        increasing, decreasing = (diffs >= -1e-5).all(), (diffs <= 1e-5).all()
        assert increasing or decreasing  # a monotone curve, possibly inverted
        seen.add("inverted" if decreasing and not increasing else "monotone")
    assert seen == {"inverted", "monotone"}


def test_in_painting_fills_boxes_inside_the_range() -> None:
    x = patch()
    out = in_painting(x, rng(3))
    changed = out != x
    assert changed.any() and changed.mean() < 0.5
    assert out.min() >= x.min() and out.max() <= x.max()


def test_out_painting_keeps_only_inner_boxes() -> None:
    x = patch(shape=(1, 21, 21, 21))
    out = out_painting(x, rng(4))
    kept = out == x
    assert 0.0 < kept.mean() < 0.9
    assert not kept[:, 0, 0, 0].any()  # the border is noise (boxes keep 3 voxels off it)


def test_corrupt_is_seeded_and_keeps_target_clean() -> None:
    y = patch()
    x1, t1 = corrupt(y, rng(5))
    x2, t2 = corrupt(y, rng(5))
    assert np.array_equal(x1, x2) and np.array_equal(t1, t2)
    assert x1.shape == t1.shape == y.shape and x1.dtype == np.float32
    assert np.allclose(np.sort(t1.ravel()), np.sort(y.ravel()))  # the target is y, at most flipped


def test_sample_patch_pads_small_volumes() -> None:
    vol = patch(shape=(2, 10, 20, 20))
    out = sample_patch(vol, (16, 16, 16), rng())
    assert out.shape == (2, 16, 16, 16)
    x, y = make_batch([vol], (16, 16, 16), 3, rng())
    assert x.shape == y.shape == (3, 2, 16, 16, 16)


def _write_volumes(folder: Path, n: int = 2, ct: bool = False) -> Path:
    g = rng(7)
    for i in range(n):
        data = np.zeros((18, 18, 18), np.float32)
        data[3:15, 3:15, 3:15] = g.normal(100.0, 20.0, (12, 12, 12))
        if ct:
            data = data * 10 - 1000.0
        write_volume(folder / f"v{i}.nii.gz", data)
    return folder


def test_load_volumes_normalises_like_the_engine(tmp_path: Path) -> None:
    mr = load_volumes(_write_volumes(tmp_path / "mr"), "MR")
    assert len(mr) == 2 and mr[0].shape == (1, 18, 18, 18)
    inside = mr[0][0, 3:15, 3:15, 3:15]
    assert inside.mean() == pytest.approx(0.0, abs=1e-4) and inside.std() == pytest.approx(1.0, abs=1e-3)
    assert mr[0][0, 0, 0, 0] == 0.0  # background left out of the z-score
    ct = load_volumes(_write_volumes(tmp_path / "ct", ct=True), "CT")
    assert ct[0].min() >= 0.0 and ct[0].max() <= 1.0 and ct[0][0, 0, 0, 0] == 0.0  # -1000 HU → 0
    with pytest.raises(DatasetError, match="no such folder"):
        load_volumes(tmp_path / "missing", "MR")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no \.nii\.gz"):
        load_volumes(tmp_path / "empty", "MR")


def test_pretrain_is_seeded_and_learns(tmp_path: Path) -> None:
    volumes = load_volumes(_write_volumes(tmp_path / "mr"), "MR")
    config = PretrainConfig(
        build_kwargs={"width": 4}, steps=3, patch_size=(16, 16, 16), batch_size=2, precision="fp32", log_every=1
    )
    a, ra = pretrain(volumes, config)
    b, rb = pretrain(volumes, config)
    assert [p["loss"] for p in ra.curve] == pytest.approx([p["loss"] for p in rb.curve])
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert a.out_tr.final_conv.out_channels == 1  # restoration: output channels = input channels
    assert len(ra.curve) == 3 and np.isfinite(ra.final_loss)
