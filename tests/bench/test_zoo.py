"""The benchmark zoo's recipe, data generators and leak check (no candidate is trained here)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo as Z


def test_recipe_spans_architectures_and_ways_of_making():
    recipe = Z.ZOO_RECIPE
    assert len(recipe) >= 10
    families = {r.architecture for r in recipe}
    assert {"unet3d", "medicalnet_resnet10", "monai"} <= families
    assert {r.build.get("width") for r in recipe if r.architecture == "unet3d"} == {4, 8}
    assert {r.make for r in recipe} == {"random", "supervised", "genesis", "damaged"}
    genesis_sources = {r.source for r in recipe if r.make == "genesis"}
    assert genesis_sources == {"unlabeled_mr", "unlabeled_ct"}
    assert {r.source for r in recipe if r.make == "supervised"} == {"source_t1", "source_shapes"}


def test_keys_are_stable_and_follow_the_parent():
    keys = Z.recipe_keys(Z.ZOO_RECIPE)
    assert keys == Z.recipe_keys(Z.ZOO_RECIPE)
    changed = [replace(r, steps=r.steps + 1) if r.name == "rn10_brain_t1" else r for r in Z.ZOO_RECIPE]
    new = Z.recipe_keys(changed)
    assert new["rn10_brain_t1"] != keys["rn10_brain_t1"]
    assert new["rn10_brain_t1_damaged"] != keys["rn10_brain_t1_damaged"]  # the child is rebuilt too
    assert new["u8_random"] == keys["u8_random"]


def test_every_data_set_draws_its_own_subjects():
    roots = [s.root for s in (*Z.SOURCES.values(), *Z.TASKS.values())]
    assert len(roots) == len(set(roots))
    assert Z.TUNING_TASK not in Z.EVALUATION_TASKS and len(Z.EVALUATION_TASKS) >= 3
    kinds = {Z.TASKS[t].kind for t in Z.EVALUATION_TASKS}
    assert "ct_head" in kinds and "mr_ventricles" in kinds


@pytest.mark.parametrize("kind", ["ct_head", "t2_tissue", "mr_ventricles", "shapes"])
def test_cases_have_their_declared_labels(kind):
    image, label, _, _ = Z.make_case(kind, np.random.default_rng(3))
    assert image.shape == label.shape and np.isfinite(image).all()
    assert set(np.unique(label)) == set(Z.LABELS[kind].values())
    if kind == "mr_ventricles":
        assert 0 < (label > 0).mean() < 0.02  # a small structure
    if kind == "ct_head":
        assert image.min() < -900 and image.max() > 700  # air and bone in HU


def test_check_disjoint_refuses_a_task_subject_used_by_a_candidate(tmp_path: Path):
    spec = Z.DataSpec("tiny", "shapes", 99_999, 1, 1, 1)
    folder = Z.write_data(spec, tmp_path)
    cases = Z.data_manifest(folder)["cases"]
    zoo = Z.Zoo(candidates=[], manifests={"a": {"subjects": ["other"]}}, keys={})
    Z.check_disjoint(zoo, [("tiny", folder)])
    zoo.manifests["a"]["subjects"].append(cases[-1]["anatomy"])  # the test case
    with pytest.raises(AssertionError, match="test subject"):
        Z.check_disjoint(zoo, [("tiny", folder)])


def test_the_nnunet_extension_pool_leaves_the_pre_registered_keys_and_loads_as_nnunet(tmp_path: Path):
    """Issue 11's extension pool: adding it keeps every key the ground truth records (so nothing is rebuilt or
    recomputed), and a candidate is an nnU-Net v2 checkpoint that ranking reads through the nnU-Net loader."""
    import json

    from bnrank.engine.fitting import load_checkpoint

    recorded = json.loads((Path(__file__).resolve().parents[2] / "bench/results/zoo.json").read_text())["keys"]
    assert Z.recipe_keys(Z.ALL_RECIPES[: len(Z.ZOO_RECIPE)]) == Z.recipe_keys(Z.ZOO_RECIPE) == recorded
    assert {r.make for r in Z.NNUNET_RECIPE} == {"random", "supervised", "genesis"}
    zoo = Z.build_zoo(tmp_path, [r for r in Z.NNUNET_RECIPE if r.make == "random"], log=lambda _: None)
    candidate = zoo.candidates[0]
    assert candidate.path.name == "checkpoint_final.pth" and candidate.architecture is None
    model, report = load_checkpoint(candidate.path, out_channels=3, in_channels=1)
    assert report.architecture == "nnunet" and report.format == "nnunet"
    norms = [m for m in model.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert len(norms) == 14 and all(m.affine for m in norms)
    assert model(torch.zeros(1, 1, Z.PATCH, Z.PATCH, Z.PATCH)).shape == (1, 3, Z.PATCH, Z.PATCH, Z.PATCH)
