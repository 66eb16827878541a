"""MONAI bundles: a folder or zip with configs/metadata.json, configs/inference.json (or train.json) whose
`network_def` describes the network, and models/model.pt with its weights.

A bundle's configs are programs as much as data: MONAI's ConfigParser would evaluate `$` expressions, resolve
`@` references into instantiated objects and import any `_target_`. Here the config is loaded into a
ConfigParser (with no globals, so nothing is imported) only to look ids up; `network_def` is taken raw,
`@id` references inside it are replaced by the referenced values when those are plain literals, and the
result goes through the same checks as a network_def sent with an upload (`parse_network_def`): its
`_target_` must be an allow-listed MONAI network class, and any `$` expression, remaining reference or
nested `_target_` is refused before anything is instantiated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from monai.bundle import ConfigParser

from bnrank.engine.architectures.monai_nets import parse_network_def
from bnrank.engine.errors import CorruptCheckpointError, NetworkDefError
from bnrank.engine.formats.zips import ModelTree, read_json

CONFIG_NAMES = ("configs/inference.json", "configs/train.json")
WEIGHT_NAMES = ("models/model.pt", "models/model.safetensors")
MAX_REFERENCE_DEPTH = 8
_MISSING = object()


@dataclass
class BundleLayout:
    """Where a bundle's metadata, config and weights are inside a folder or zip."""

    root: str
    metadata: str
    config: str
    weights: str


def find_layout(tree: ModelTree) -> BundleLayout | None:
    """The bundle inside `tree` (possibly wrapped in one top folder), or None without configs/metadata.json."""
    metas = tree.find("configs/metadata.json")
    if not metas:
        return None
    if len(metas) > 1:
        raise CorruptCheckpointError(f"{tree.label}: holds {len(metas)} MONAI bundles; upload one per candidate")
    root = metas[0][: -len("configs/metadata.json")]
    config = next((root + n for n in CONFIG_NAMES if root + n in tree.members), None)
    if config is None:
        raise CorruptCheckpointError(
            f"{tree.label}: MONAI bundle without configs/inference.json or configs/train.json "
            "(only JSON configs are read)"
        )
    weights = next((root + n for n in WEIGHT_NAMES if root + n in tree.members), None)
    if weights is None:
        has_ts = root + "models/model.ts" in tree.members
        hint = (
            " (models/model.ts, a TorchScript export, is not used: upload it on its own if you want it)"
            if has_ts
            else ""
        )
        raise CorruptCheckpointError(f"{tree.label}: MONAI bundle without models/model.pt{hint}")
    return BundleLayout(root.rstrip("/"), root + "configs/metadata.json", config, weights)


def _resolve(value: Any, parser: ConfigParser, where: str, depth: int = 0) -> Any:
    """Replace `@id` references by the literal values they point at; leave everything else for the checks."""
    if depth > MAX_REFERENCE_DEPTH:
        raise NetworkDefError(f"bundle network_def {where}: references nest deeper than {MAX_REFERENCE_DEPTH}")
    if isinstance(value, str) and value.startswith("@"):
        ref = value[1:]
        try:
            target = parser.get(ref, _MISSING)
        except (KeyError, IndexError, ValueError, TypeError):
            target = _MISSING
        if target is _MISSING:
            raise NetworkDefError(f"bundle network_def {where}: reference {value!r} points at nothing")
        return _resolve(target, parser, where, depth + 1)
    if isinstance(value, list):
        return [_resolve(item, parser, f"{where}[{i}]", depth) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        return {key: _resolve(item, parser, f"{where}.{key}", depth) for key, item in value.items()}
    return value


def network_def_of(config: Mapping[str, Any], label: str) -> dict[str, Any]:
    """The bundle's `network_def`, references to literals inlined, checked against the allow-list."""
    parser = ConfigParser(dict(config), globals=False)
    raw = parser.get("network_def")
    if raw is None:
        raise CorruptCheckpointError(f"{label}: the bundle config has no 'network_def'")
    if isinstance(raw, str):  # e.g. "$monai.networks.nets.UNet(...)" or "@other_net"
        if raw.startswith("@"):
            raw = _resolve(raw, parser, "network_def")
        else:
            raise NetworkDefError(
                f"{label}: network_def {raw[:80]!r} is an expression; only a literal definition is read"
            )
    if not isinstance(raw, Mapping):
        raise NetworkDefError(f"{label}: network_def must be a mapping with a '_target_'")
    try:
        resolved = _resolve(raw, parser, "network_def")
        parse_network_def(resolved)  # refuses what is not allowed, before anything is built
    except NetworkDefError as exc:
        raise NetworkDefError(f"{label}: bundle {exc}") from exc
    return resolved


def describe(tree: ModelTree, layout: BundleLayout) -> tuple[dict[str, Any], dict[str, Any]]:
    """(network_def, what the load report tells about the bundle)."""
    metadata = read_json(tree, layout.metadata)
    config = read_json(tree, layout.config)
    network_def = network_def_of(config, tree.label)
    data_format = metadata.get("network_data_format") if isinstance(metadata.get("network_data_format"), dict) else {}
    source = {
        "bundle": layout.root or ".",
        "name": metadata.get("name"),
        "version": metadata.get("version"),
        "config": layout.config,
        "weights": layout.weights,
        "network_def": network_def,
        "inputs": data_format.get("inputs"),
    }
    return network_def, source
