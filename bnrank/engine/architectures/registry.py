"""The registry every other part of the engine asks for networks, plus shape-probing helpers.

A checkpoint arrives as a bag of tensors; the rest of the engine needs a module that reproduces its keys and
shapes exactly, and needs to know which keys form the segmentation head (re-initialised for every candidate
so BN-only evaluation compares encoders, not someone else's label set). Each architecture module registers
an `Architecture` here on import; `bnrank.engine.architectures` imports them all.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bnrank.engine.errors import BNRankError, UnknownArchitectureError

Shapes = Mapping[str, tuple[int, ...]]
InferFn = Callable[[Shapes], dict[str, Any] | None]


@dataclass(frozen=True)
class Architecture:
    """A buildable network family together with what the engine must know to match checkpoints to it."""

    name: str
    description: str
    build: Callable[..., nn.Module]
    head: tuple[str, ...]
    infer: InferFn
    idle_head: Callable[[nn.Module], set[str]] | None = None
    """Names of head modules the built network's forward never runs (nnU-Net's deep-supervision seg layers
    with deep supervision off). They stay head keys, so loading lets their shapes follow the task's classes,
    but they are neither re-initialised nor trained: resetting them first would move the point of the seed's
    stream the head that computes the output starts from, and an export of the same weights (ONNX) does not
    contain them, so the two would start from different heads."""


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add `arch`; a second registration under one name is a programming error, so it fails loudly."""
    if arch.name in ARCHITECTURES:
        raise ValueError(f"architecture {arch.name!r} is registered twice")
    ARCHITECTURES[arch.name] = arch
    return arch


def get_architecture(name: str) -> Architecture:
    """Look `name` up, telling the user which names would have worked."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UnknownArchitectureError(f"unknown architecture {name!r}; known: {known}") from None


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered architecture; a misspelt option becomes a user-facing error, not a TypeError."""
    arch = get_architecture(name)
    params = inspect.signature(arch.build).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            valid = ", ".join(params)
            raise BNRankError(
                f"architecture {name!r} has no option(s) {', '.join(unknown)}; valid options: {valid}"
            )
    return arch.build(**kwargs)


def head_keys(model: nn.Module, arch: Architecture) -> list[str]:
    """State-dict keys of `model` that belong to the head, in state-dict order."""
    if not arch.head:
        return []
    return [key for key in model.state_dict() if key.startswith(arch.head)]


def state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Key→shape map, the form in which checkpoints are compared without touching their values."""
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def probe_shapes(build: Callable[..., nn.Module], **kwargs: Any) -> dict[str, tuple[int, ...]]:
    """Shapes of `build(**kwargs)`, built on the meta device so probing a 100M-parameter net costs nothing.

    A few constructors compute with real tensors (SwinUNETR calls `.item()`); those are built on the CPU.
    """
    try:
        with torch.device("meta"):
            model = build(**kwargs)
    except BNRankError:
        raise
    except (RuntimeError, NotImplementedError):
        model = build(**kwargs)
    return state_shapes(model)


def _module_prefix(key: str) -> str:
    """Prefix selecting the module that owns `key`, so its sibling tensors (bias, BN buffers) come along."""
    owner, dot, _ = key.rpartition(".")
    return owner + dot if owner else key


def probe_head(build: Callable[..., nn.Module], out_channels: int = 2) -> tuple[str, ...]:
    """Head prefixes found by building with `out_channels` and one more and seeing which modules change.

    This needs no knowledge of the network's naming, which is what lets arbitrary MONAI bundle networks be
    ranked: whatever depends on the label count is, by definition, the part a new task must replace.
    """
    first = probe_shapes(build, out_channels=out_channels)
    second = probe_shapes(build, out_channels=out_channels + 1)
    changed = {_module_prefix(key) for key, shape in first.items() if second.get(key) != shape}
    changed |= {_module_prefix(key) for key in second.keys() - first.keys()}
    return tuple(sorted(changed))


def reproduces(
    build: Callable[..., nn.Module],
    kwargs: Mapping[str, Any],
    shapes: Shapes,
    head: tuple[str, ...],
    *,
    allow_extra: bool = False,
) -> bool:
    """Whether `build(**kwargs)` has exactly the checkpoint's keys and shapes.

    The head may be absent as a whole (encoder-only releases), and `num_batches_tracked` may be missing
    (checkpoints saved before PyTorch 0.4.1 lack it); anything else must match. `allow_extra` accepts keys
    the network lacks (say a classifier `fc` fine-tuned onto a MedicalNet encoder) for architectures whose
    own signature is distinctive enough that the rest is left for the loader to report.
    """
    try:
        expected = probe_shapes(build, **kwargs)
    except (BNRankError, TypeError, ValueError, RuntimeError):
        return False
    given = {key: tuple(shape) for key, shape in shapes.items()}
    if head and not any(key.startswith(head) for key in given):
        expected = {key: shape for key, shape in expected.items() if not key.startswith(head)}
    if not allow_extra and given.keys() - expected.keys():
        return False
    missing = expected.keys() - given.keys()
    if any(not key.endswith("num_batches_tracked") for key in missing):
        return False
    return all(expected[key] == shape for key, shape in given.items() if key in expected)


def _solve_channels(
    ref: dict[str, tuple[int, ...]],
    plus_one: dict[str, tuple[int, ...]],
    base: int,
    keys: list[str],
    shapes: Shapes,
) -> int | None:
    """Read a channel count off the first key whose shape grows linearly with it; None if inconsistent.

    `ref` was built with `base` channels and `plus_one` with one more.
    """
    for key in keys:
        a, b, given = ref[key], plus_one[key], shapes.get(key)
        if given is None or len(given) != len(a) or len(a) != len(b):
            continue
        for dim, (sa, sb) in enumerate(zip(a, b, strict=True)):
            if sa == sb:
                continue
            steps, rest = divmod(given[dim] - sa, sb - sa)
            count = base + steps
            return count if rest == 0 and count >= 1 else None
    return None


class ProbeInfer:
    """`infer` for networks known only through their builder: in/out channels are read off the shapes.

    Reference builds at 1→2, 2→2 and 1→3 channels show which tensors scale with each count; the inferred
    kwargs are accepted only if a build with them reproduces the checkpoint exactly. Width-like options are
    not inferred: a checkpoint of a differently configured network simply is not recognised.
    """

    def __init__(self, build: Callable[..., nn.Module], head: tuple[str, ...]) -> None:
        self._build = build
        self._head = head
        self._refs: tuple[dict[str, tuple[int, ...]], ...] | None = None

    def _references(self) -> tuple[dict[str, tuple[int, ...]], ...]:
        if self._refs is None:
            self._refs = (
                probe_shapes(self._build, in_channels=1, out_channels=2),
                probe_shapes(self._build, in_channels=2, out_channels=2),
                probe_shapes(self._build, in_channels=1, out_channels=3),
            )
        return self._refs

    def __call__(self, shapes: Shapes) -> dict[str, Any] | None:
        ref, more_in, more_out = self._references()
        head = self._head
        in_keys = [k for k in ref if ref[k] != more_in.get(k)]
        in_keys.sort(key=lambda k: bool(head) and k.startswith(head))  # prefer encoder tensors
        in_channels = _solve_channels(ref, more_in, 1, in_keys, shapes)
        if in_channels is None:
            return None
        kwargs: dict[str, Any] = {"in_channels": in_channels}
        if head and any(key.startswith(head) for key in shapes):
            out_keys = [k for k in ref if ref[k] != more_out.get(k)]
            out_channels = _solve_channels(ref, more_out, 2, out_keys, shapes)
            if out_channels is None:
                return None
            kwargs["out_channels"] = out_channels
        return kwargs if reproduces(self._build, kwargs, shapes, head) else None


_BLOCK_KEY = re.compile(r"^(?P<prefix>.+?)\.(?P<index>\d+)\.")


def count_blocks(shapes: Shapes, prefix: str) -> int:
    """Number of distinct `prefix.<i>.` children, i.e. the length of a Sequential of blocks."""
    seen = set()
    for key in shapes:
        match = _BLOCK_KEY.match(key)
        if match and match["prefix"] == prefix:
            seen.add(int(match["index"]))
    return len(seen)
