"""Reading a ``.safetensors`` file: it holds no code, but its header is checked before the library trusts it."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

from bnrank.engine.errors import CorruptCheckpointError


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    size = path.stat().st_size
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if 8 + header_len > size:
            raise CorruptCheckpointError(
                f"{path.name}: safetensors header claims {header_len} bytes but the file has {size - 8}"
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptCheckpointError(f"{path.name}: safetensors header is not valid JSON ({exc})") from exc
    data_len = size - 8 - header_len
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not offsets or len(offsets) != 2 or offsets[1] > data_len or offsets[0] > offsets[1]:
            raise CorruptCheckpointError(
                f"{path.name}: tensor {key!r} points at bytes {offsets} but the data section has {data_len}"
            )
    try:
        return load_safetensors(str(path), device="cpu")
    except (SafetensorError, ValueError, OSError) as exc:
        raise CorruptCheckpointError(f"{path.name}: unreadable safetensors file ({exc})") from exc
