"""Loading the shared formats at realistic sizes: time and peak memory per format, one process each.

nnU-Net v2 (a 3d_fullres PlainConvUNet, 6 stages of 32-320 features, 31 M parameters, saved with its
optimizer state as nnU-Net saves it) as a model-folder zip and as a bare checkpoint_final.pth; a MONAI
SegResNet bundle zip; a Models Genesis unet3d (full width) as a TorchScript archive, read by the
restricted unpickler, beside `torch.jit.load` of the same (trusted, self-made) file for comparison.
Peak memory is VmHWM of the loading process (reset at exec, unlike ru_maxrss, which a child inherits).

    PYTHONPATH=. .venv/bin/python bench/format_loading.py     # about a minute; writes to a temp folder
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

_PEAK = "next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024"
LOAD = f"""
import sys, time, torch
torch.set_num_threads(1)
from bnrank.engine.checkpoints import load_checkpoint
start = time.perf_counter()
model, report = load_checkpoint(sys.argv[1])
took = time.perf_counter() - start
n = sum(p.numel() for p in model.parameters()) / 1e6
print(f"{{report.format:13s}} {{report.architecture[:24]:24s}} {{n:5.1f}} M  {{took:6.2f}} s  {{{_PEAK}:6.0f}} MiB")
"""
JIT = f"""
import sys, time, torch
torch.set_num_threads(1)
start = time.perf_counter()
torch.jit.load(sys.argv[1])
took = time.perf_counter() - start
print(f"{{'torch.jit.load':13s}} {{'(comparison only)':24s}} {{'':5s}}    {{took:6.2f}} s  {{{_PEAK}:6.0f}} MiB")
"""


def write_files(root: Path) -> list[Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from bnrank.engine.architectures.nnunet import build_nnunet
    from tests.engine.formats import makers as mk

    plans = mk.plans(features=(32, 64, 128, 256, 320, 320))
    kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    kwargs["n_conv_per_stage"], kwargs["n_conv_per_stage_decoder"] = [2] * 6, [2] * 5
    model = build_nnunet(1, 3, network_class_name=mk.PLAIN, arch_kwargs=kwargs)
    folder = root / "results" / mk.TRAINER_FOLDER
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(mk.dataset_json()))
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(mk.nnunet_checkpoint(model, plans), checkpoint)
    segresnet = {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 16}
    return [
        mk.zip_folder(folder, root / "nnunet_model.zip"),
        checkpoint,
        mk.zip_folder(mk.write_bundle(root, segresnet), root / "segresnet_bundle.zip"),
        mk.write_torchscript(root / "genesis_traced.pt", width=32)[0],
    ]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_files(Path(tmp))
        header = f"{'file':24s} {'size':>9s}  {'format':13s} {'architecture':24s} {'params':>7s}"
        print(f"{header} {'load':>8s} {'peak':>10s}")
        for path in paths:
            print(f"{path.name:24s} {path.stat().st_size / 2**20:6.1f} MiB  ", end="", flush=True)
            subprocess.run([sys.executable, "-c", LOAD, str(path)], check=True)
        print(f"{paths[-1].name:24s} {paths[-1].stat().st_size / 2**20:6.1f} MiB  ", end="", flush=True)
        subprocess.run([sys.executable, "-c", JIT, str(paths[-1])], check=True)


if __name__ == "__main__":
    main()
