"""The demo: a real MRI task and candidates of known, different quality.

The task is the MNI brain tissue task of ``demo_volumes``. The candidates are narrow Models Genesis
UNet3D networks whose quality is known by construction, so a ranking of them can be checked:

- ``brain_supervised``: fully trained on *other* subjects of the same anatomy (a related labelled task);
- ``brain_early``: the same run stopped early (partly trained);
- ``brain_damaged``: the supervised weights with most filters overwritten by noise (deliberately damaged);
- ``random_init``: Kaiming-initialised weights, as a user's "from scratch" file would be.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from bnrank.engine.architectures import build_model
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.data import PreprocessConfig, open_dataset, preprocess
from bnrank.engine.demo_volumes import write_demo_task
from bnrank.engine.task import make_task
from bnrank.engine.training.trainer import train

DEMO_ARCH = "unet3d"
DEMO_WIDTH = 8
DEMO_PATCH = (32, 32, 32)


def _damage(model: torch.nn.Module, share: float, seed: int) -> None:
    """Overwrite ``share`` of every conv's output filters with noise of the same scale."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv3d | torch.nn.ConvTranspose3d):
                w = module.weight
                n = w.shape[0]
                idx = torch.randperm(n, generator=g)[: int(n * share)]
                noise = torch.randn(w[idx].shape, generator=g) * w.std()
                w[idx] = noise


def write_demo(
    out_dir: str | Path,
    *,
    n_cases: int = 12,
    seed: int = 0,
    source_cases: int = 8,
    train_steps: int = 150,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Write the demo task and its candidates under ``out_dir``; returns their paths."""
    out = Path(out_dir)
    dataset = write_demo_task(out, n_cases=n_cases, seed=seed)
    log(f"task: {dataset} ({n_cases} subjects)")
    cand_dir = out / "candidates"
    cand_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {"in_channels": 1, "out_channels": 4, "width": DEMO_WIDTH}

    torch.manual_seed(seed + 7)
    paths = {
        "random_init": save_weights(
            build_model(DEMO_ARCH, **kwargs),
            cand_dir / "random_init.safetensors",
            {"description": "random initialisation"},
        )
    }

    with tempfile.TemporaryDirectory() as tmp:
        source = write_demo_task(Path(tmp), n_cases=source_cases, seed=seed + 1000, name="Dataset502_MNIBrainSource")
        pre = preprocess(open_dataset(source), PreprocessConfig(), cache_root=Path(tmp) / "cache")
        task = make_task(pre, val_fraction=0.25, seed=seed)
        torch.manual_seed(seed + 11)
        model = build_model(DEMO_ARCH, **kwargs)
        early_steps = max(1, train_steps // 6)
        config = TrainConfig(
            max_steps=early_steps,
            patch_size=DEMO_PATCH,
            batch_size=2,
            val_every=early_steps,
            patience=10**6,
            lr=3e-3,
            seed=seed,
        )
        result = train(model, model.parameters(), task, config, label="source task")
        log(f"brain_early: {early_steps} steps on {source_cases} other subjects, val Dice {result.score:.3f}")
        paths["brain_early"] = save_weights(
            model, cand_dir / "brain_early.safetensors", {"description": "partly trained on the same anatomy"}
        )
        config = TrainConfig(
            max_steps=train_steps - early_steps,
            patch_size=DEMO_PATCH,
            batch_size=2,
            val_every=train_steps,
            patience=10**6,
            lr=3e-3,
            seed=seed + 1,
        )
        result = train(model, model.parameters(), task, config, label="source task")
        log(f"brain_supervised: {train_steps} steps, val Dice {result.score:.3f}")
        paths["brain_supervised"] = save_weights(
            model,
            cand_dir / "brain_supervised.safetensors",
            {"description": "trained on other subjects of the same anatomy"},
        )
        _damage(model, share=0.75, seed=seed)
        paths["brain_damaged"] = save_weights(
            model,
            cand_dir / "brain_damaged.safetensors",
            {"description": "supervised weights, 75% of filters replaced by noise"},
        )
    return {"dataset": dataset, "candidates": list(paths.values())}
