"""Unpickling a PyTorch checkpoint with `torch.load(weights_only=True)` only, after its sizes were checked.

A file that needs more than tensors, containers and numeric numpy scalars is refused as unsafe, never retried
with a full unpickle.
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnrank.engine.errors import CorruptCheckpointError, UnsafeCheckpointError
from bnrank.engine.formats.legacy import check_legacy_torch
from bnrank.engine.formats.limits import DEFAULT_MAX_CHECKPOINT_BYTES
from bnrank.engine.formats.torch_zip import check_torch_zip

try:  # numpy >= 2 moved it; pickles written under numpy 1 still name numpy.core
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import scalar as _np_scalar  # type: ignore[no-redef]

# What `torch.load(weights_only=True)` may build beyond tensors and containers: numpy scalars, which training
# logs hold (nnU-Net v2's checkpoint_final.pth keeps its per-epoch losses and Dice as np.float64). A scalar is
# rebuilt from a dtype and its raw bytes, and only numeric dtypes are listed, so nothing here can run code or
# build an arbitrary object. Granted per call (`torch.serialization.safe_globals`), never registered globally.
NUMPY_SAFE_GLOBALS: list[Any] = [
    np.dtype,
    _np_scalar,
    (_np_scalar, "numpy.core.multiarray.scalar"),
    (_np_scalar, "numpy._core.multiarray.scalar"),
    *(
        getattr(np.dtypes, name)
        for name in (
            "Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "Int16DType", "Int8DType",
            "UInt64DType", "UInt32DType", "UInt16DType", "UInt8DType", "BoolDType",
        )
        if hasattr(np.dtypes, name)
    ),
]
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_torch(path: Path, max_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES) -> Any:
    with path.open("rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip:
        check_torch_zip(path, max_bytes=max_bytes)
    else:
        check_legacy_torch(path, max_bytes=max_bytes)
    try:
        with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text or "GLOBAL" in text:
            named = _UNSAFE_GLOBAL.search(text)
            what = f" (it names {named.group(1)})" if named else ""
            raise UnsafeCheckpointError(
                f"{path.name}: refused, the file needs code execution to load{what}; it is not plain tensors. "
                "Save weights with safetensors or torch.save(model.state_dict()) and upload that."
            ) from exc
        raise CorruptCheckpointError(f"{path.name}: not a readable PyTorch checkpoint ({text[:200]})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, struct.error) as exc:
        if "TorchScript" in str(exc):  # an archive the zip sniffing missed (it never reaches torch.jit.load)
            raise CorruptCheckpointError(
                f"{path.name}: a TorchScript archive without the usual layout (<root>/code/, <root>/data.pkl)"
            ) from exc
        if "can't allocate memory" in str(exc):  # torch's allocator failing is no verdict on the file
            raise MemoryError(str(exc).splitlines()[0][:200]) from exc
        raise CorruptCheckpointError(
            f"{path.name}: truncated or corrupt PyTorch checkpoint ({str(exc).splitlines()[0][:200]})"
        ) from exc
