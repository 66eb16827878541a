"""What a user may say about one checkpoint beyond what its file says: per candidate, not per ranking.

The CLI's per-checkpoint flags and the upload's fields (form field and query parameter) are generated from
`CandidateOptions`; the service stores the value with the checkpoint, so every worker takes it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from bnrank.engine.options import option

MAX_HEAD_NAME = 300


@dataclass(frozen=True)
class CandidateOptions:
    head: str | None = option(
        None,
        help="a converted graph's head (ONNX, or TorchScript through the sandbox): the convolution it starts at, by "
        "its weight name (as in the state dict), its node name or its weight's full name; it and every layer "
        "computed from its output are re-initialised and trained (default: the convolutions feeding the output, "
        "or a recognised family's head)",
    )
