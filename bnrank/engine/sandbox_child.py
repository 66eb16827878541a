"""The program `bnrank.engine.sandbox` runs inside its box: load a TorchScript archive and export it to ONNX.

Run as ``python -m bnrank.engine.sandbox_child IN_CHANNELS``, with the archive at /in/model.pt and the output
file bound at /out/model.onnx (nothing else on the host is writable). The module is exported in train mode
(``TrainingMode.TRAINING``) so its BatchNorm nodes are kept rather than folded into the convolutions, with
dynamic batch and spatial axes so the graph runs on any patch size. Imports nothing of BNRank beyond itself.
"""

from __future__ import annotations

import sys
import warnings

ARCHIVE = "/in/model.pt"
OUTPUT = "/out/model.onnx"
PROBE_SIZE = 32  # spatial size of the example input; the export's axes are dynamic


def main(argv: list[str]) -> int:
    import torch

    torch.set_num_threads(1)
    in_channels = int(argv[0])
    model = torch.jit.load(ARCHIVE, map_location="cpu")
    model.train()
    example = torch.zeros(2, in_channels, PROBE_SIZE, PROBE_SIZE, PROBE_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), OUTPUT, dynamo=False, opset_version=17, training=torch.onnx.TrainingMode.TRAINING,
            input_names=["image"], dynamic_axes={"image": {0: "n", 2: "d", 3: "h", 4: "w"}},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
