"""A candidate zoo of known make-up and the downstream tasks of the ranking-quality benchmark.

Everything is built offline from the MNI brain anatomy of ``demo_volumes`` (no download):

- MR-like unlabeled volumes: demo subjects' T1 images (seeds disjoint from every task);
- CT-like unlabeled volumes: the same anatomy with CT attenuation per tissue (CSF 8 HU, grey matter
  40 HU, white matter 28 HU, a skull of cortical bone around the brain, a soft-tissue scalp, air outside),
  blurred by a Gaussian point-spread function and given Gaussian quantum noise. It is the demo anatomy
  with a CT-like contrast, not a CT simulation: no beam hardening, no streaks, a uniform skull;
- candidates of one architecture (``unet3d``, narrow): random initialisation, Models Genesis pretraining
  on MR-like and on CT-like volumes (``bnrank.engine.pretrain``), supervised training on other subjects of
  the demo task (``bnrank.engine.demo.write_demo``: trained, stopped early, 75 % of filters damaged), and,
  in the full zoo, a shorter MR pretraining and a lightly (25 %) damaged supervised network;
- tasks: the demo MRI task itself (three tissue classes) and a harder variant (CSF only, few cases).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bnrank.engine.checkpoints import load_checkpoint, save_weights
from bnrank.engine.demo import DEMO_ARCH, DEMO_WIDTH, _damage, write_demo
from bnrank.engine.demo_volumes import make_subject, write_demo_task
from bnrank.engine.pretrain import PretrainConfig, load_volumes, pretrain
from bnrank.engine.ranking import Candidate

# Hounsfield units of brain CT (typical textbook values) for the CT-like contrast.
CT_HU = {"air": -1000.0, "CSF": 8.0, "grey matter": 40.0, "white matter": 28.0, "bone": 900.0, "scalp": 20.0}
CT_NOISE_HU = 8.0


def ct_like_image(label: np.ndarray, rng: np.random.Generator, noise_hu: float = CT_NOISE_HU) -> np.ndarray:
    """A CT-like head image (HU) from a demo tissue label map: tissue HU, skull, scalp, PSF blur, noise."""
    brain = label > 0
    skull = ndimage.binary_dilation(brain, iterations=2) & ~brain
    scalp = ndimage.binary_dilation(brain, iterations=3) & ~brain & ~skull
    hu = np.full(label.shape, CT_HU["air"], dtype=np.float32)
    hu[scalp] = CT_HU["scalp"]
    hu[skull] = CT_HU["bone"] * rng.uniform(0.85, 1.1)
    for value, name in ((1, "CSF"), (2, "grey matter"), (3, "white matter")):
        hu[label == value] = CT_HU[name]
    hu = ndimage.gaussian_filter(hu, sigma=0.6)
    return (hu + rng.normal(0.0, noise_hu, hu.shape)).astype(np.float32)


def write_unlabeled(out: str | Path, n: int, seed: int, modality: str, spacing_mm: float = 4.0) -> Path:
    """``n`` unlabeled demo-anatomy volumes, T1 MR-like (``MR``) or CT-like (``CT``), as .nii.gz files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if len(list(out.glob("*.nii.gz"))) == n:  # already written (same seed, same files)
        return out
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
        rng = np.random.default_rng(child)
        image, label, affine = make_subject(rng, spacing_mm=spacing_mm)
        if modality == "CT":
            image = ct_like_image(label, rng)
        nib.save(nib.Nifti1Image(image, affine), str(out / f"{modality.lower()}_{i:03d}.nii.gz"))
    return out


def write_csf_task(out: str | Path, n_cases: int, seed: int, name: str = "Dataset503_MNIBrainCSF") -> Path:
    """The harder task: demo subjects with CSF as the only foreground class (thin and small at 4-5 mm)."""
    root = write_demo_task(out, n_cases=n_cases, seed=seed, name=name)
    for path in sorted((root / "labelsTr").glob("*.nii.gz")):
        img = nib.load(str(path))
        label = (np.asarray(img.dataobj) == 1).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, img.affine, img.header), str(path))
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "CSF": 1}
    meta["description"] += " Labels reduced to CSF only (grey and white matter are background)."
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


@dataclass
class ZooSpec:
    """Sizes of the zoo (all ``unet3d`` at the demo's width, 8); ``quick`` shrinks every budget."""

    pretrain_steps: int = 150
    pretrain_patch: int = 24
    pretrain_batch: int = 2
    pretrain_volumes: int = 8
    supervised_steps: int = 150
    source_cases: int = 8
    task_cases: int = 12
    extra: bool = True  # the two extra candidates of the full zoo
    seed: int = 0

    @classmethod
    def quick(cls) -> ZooSpec:
        return cls(pretrain_steps=60, pretrain_patch=24, supervised_steps=60, source_cases=6, extra=False)


@dataclass
class Zoo:
    dataset: Path
    candidates: list[Candidate]
    descriptions: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)


def build_zoo(out: str | Path, spec: ZooSpec, log: Callable[[str], None] = print) -> Zoo:
    """Write the demo task and every candidate under ``out``; returns them with what each one is."""
    out = Path(out)
    cand_dir = out / "candidates"
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    demo = write_demo(
        out,
        n_cases=spec.task_cases,
        seed=spec.seed,
        source_cases=spec.source_cases,
        train_steps=spec.supervised_steps,
        log=log,
    )
    seconds["demo task + supervised candidates"] = round(time.perf_counter() - t0, 1)
    descriptions = {
        "random_init": "random initialisation (Kaiming)",
        "brain_supervised": (
            f"trained {spec.supervised_steps} steps on {spec.source_cases} other subjects (related task)"
        ),
        "brain_early": f"the same run stopped after {max(1, spec.supervised_steps // 6)} steps (partly trained)",
        "brain_damaged": "brain_supervised with 75 % of every conv's filters replaced by noise (damaged)",
    }
    paths = {p.stem: p for p in demo["candidates"]}  # type: ignore[union-attr]

    def genesis(name: str, modality: str, seed: int, steps: int, what: str) -> None:
        t = time.perf_counter()
        folder = write_unlabeled(out / f"unlabeled_{modality.lower()}", spec.pretrain_volumes, seed, modality)
        volumes = load_volumes(folder, modality)
        config = PretrainConfig(
            architecture=DEMO_ARCH,
            build_kwargs={"width": DEMO_WIDTH},
            steps=steps,
            patch_size=(spec.pretrain_patch,) * 3,
            batch_size=spec.pretrain_batch,
            seed=spec.seed + seed,
            modality=modality,
        )
        model, result = pretrain(volumes, config)
        paths[name] = save_weights(model, cand_dir / f"{name}.safetensors", {"description": what})
        descriptions[name] = what
        seconds[name] = round(time.perf_counter() - t, 1)
        log(
            f"{name}: {steps} Models Genesis steps on {len(volumes)} {modality}-like volumes, "
            f"restoration MSE {result.curve[0]['loss']:.3f} -> {result.final_loss:.3f}"
        )

    steps = spec.pretrain_steps
    genesis("genesis_mr", "MR", 3000, steps, f"Models Genesis, {steps} steps on MR-like volumes")
    genesis("genesis_ct", "CT", 4000, steps, f"Models Genesis, {steps} steps on CT-like volumes")
    if spec.extra:
        short = max(1, steps // 4)
        genesis("genesis_mr_short", "MR", 3000, short, f"Models Genesis, {short} steps on MR-like volumes")
        model, _ = load_checkpoint(paths["brain_supervised"])
        _damage(model, share=0.25, seed=spec.seed + 5)
        paths["brain_damaged_light"] = save_weights(
            model, cand_dir / "brain_damaged_light.safetensors", {"description": "25 % of filters damaged"}
        )
        descriptions["brain_damaged_light"] = "brain_supervised with 25 % of every conv's filters replaced by noise"
    order = ["random_init", "genesis_mr", "genesis_ct", "brain_supervised", "brain_early", "brain_damaged"]
    order += [n for n in ("genesis_mr_short", "brain_damaged_light") if n in paths]
    candidates = [Candidate(name=n, path=paths[n], architecture=DEMO_ARCH) for n in order]
    return Zoo(dataset=Path(demo["dataset"]), candidates=candidates, descriptions=descriptions, seconds=seconds)  # type: ignore[arg-type]
