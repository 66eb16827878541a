"""Networks BNRank can rank: a registry keyed by name, plus networks described by MONAI bundle defs.

Importing this package registers every built-in architecture (the modules register themselves).
"""

from bnrank.engine.architectures import medicalnet, monai_nets, nnunet, unet3d
from bnrank.engine.architectures.monai_nets import ALLOWED_CLASSES, architecture_from_network_def
from bnrank.engine.architectures.registry import (
    ARCHITECTURES,
    Architecture,
    build_model,
    get_architecture,
    head_keys,
    probe_head,
)

__all__ = [
    "ALLOWED_CLASSES",
    "ARCHITECTURES",
    "Architecture",
    "architecture_from_network_def",
    "build_model",
    "get_architecture",
    "head_keys",
    "medicalnet",
    "monai_nets",
    "nnunet",
    "probe_head",
    "unet3d",
]
