"""MONAI networks: two registered presets and networks described by a bundle's `network_def`.

A `network_def` comes from a file a user uploaded, so it is treated as data, never as code. MONAI's own
ConfigParser would evaluate `$` expressions, resolve `@` references and import any `_target_`; here none
of that happens. Only classes on an allow-list from `monai.networks.nets` are instantiated, with literal
arguments, and the class is looked up by name on that module, never imported from a path.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from monai.networks import nets
from torch import nn

from bnrank.engine.architectures.registry import Architecture, ProbeInfer, probe_head, register
from bnrank.engine.architectures.sizing import DEFAULT_MAX_PARAMETERS, estimate_parameters
from bnrank.engine.errors import NetworkDefError, NetworkTooLargeError
from bnrank.engine.norms import ALL_NAMES, has_norm

_NETS_MODULE = "monai.networks.nets."
_CANDIDATES = ("UNet", "BasicUNet", "DynUNet", "SegResNet", "AttentionUnet", "VNet", "UNETR", "SwinUNETR")
# Segmentation networks taking in/out channels; filtered so an older MONAI simply offers fewer.
ALLOWED_CLASSES: tuple[str, ...] = tuple(name for name in _CANDIDATES if hasattr(nets, name))

_IGNORED_KEYS = frozenset({"_desc_"})  # documentation only; harmless to drop
_WRAP_ERRORS = (TypeError, ValueError, AssertionError, LookupError)


def _check_literal(value: Any, where: str) -> None:
    """Refuse anything MONAI's config system would evaluate, reference or instantiate."""
    if isinstance(value, str):
        if value.startswith("$"):
            raise NetworkDefError(
                f"network_def {where}: expressions ('$...') are not evaluated; use a literal value"
            )
        if value.startswith(("@", "%")):
            raise NetworkDefError(
                f"network_def {where}: references ('@...', '%...') are not resolved; inline the value"
            )
        return
    if value is None or isinstance(value, (bool, int, float)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_literal(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        if "_target_" in value:
            raise NetworkDefError(f"network_def {where}: nested '_target_' objects are not instantiated")
        for key, item in value.items():
            if not isinstance(key, str):
                raise NetworkDefError(f"network_def {where}: keys must be strings, got {key!r}")
            _check_literal(item, f"{where}.{key}")
        return
    raise NetworkDefError(
        f"network_def {where}: {type(value).__name__} values are not allowed, only JSON-style literals"
    )


def parse_network_def(defn: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Validate a network_def and split it into an allowed class name and literal constructor kwargs."""
    if not isinstance(defn, Mapping):
        raise NetworkDefError(f"a network_def must be a mapping, got {type(defn).__name__}")
    target = defn.get("_target_")
    if not isinstance(target, str) or not target:
        raise NetworkDefError("network_def needs a '_target_' naming a MONAI network class, e.g. 'UNet'")
    name = target[len(_NETS_MODULE) :] if target.startswith(_NETS_MODULE) else target
    if name not in ALLOWED_CLASSES:
        allowed = ", ".join(ALLOWED_CLASSES)
        raise NetworkDefError(
            f"network_def _target_ {target!r} is not allowed: only these monai.networks.nets classes are "
            f"built (bare or as 'monai.networks.nets.<Name>'): {allowed}"
        )
    kwargs: dict[str, Any] = {}
    for key, value in defn.items():
        if key == "_target_" or key in _IGNORED_KEYS:
            continue
        if not isinstance(key, str) or not key.isidentifier() or key.startswith("_"):
            raise NetworkDefError(f"network_def key {key!r} is not supported; only constructor arguments are")
        _check_literal(value, key)
        kwargs[key] = value
    return name, kwargs


def build_network(
    class_name: str,
    def_kwargs: Mapping[str, Any],
    in_channels: int | None,
    out_channels: int | None,
    *,
    require_norm: bool = True,
    max_parameters: int = DEFAULT_MAX_PARAMETERS,
    **options: Any,
) -> nn.Module:
    """Instantiate an allowed class; every way the arguments can be wrong becomes a NetworkDefError.

    Precedence: `options` and explicit in/out channels override the def's values, which override the
    defaults (3 spatial dims; 1 in, 2 out channels when nobody says otherwise). The parameter count is
    estimated from the arguments and checked against `max_parameters` before the constructor runs, since
    the constructor is what allocates. A network with no normalisation layer at all is refused (norm-only
    evaluation would have nothing to train) unless ``require_norm`` is False.
    """
    if class_name not in ALLOWED_CLASSES:
        raise NetworkDefError(f"{class_name!r} is not an allowed MONAI network class")
    cls = getattr(nets, class_name)
    params = inspect.signature(cls).parameters
    defaults = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2}
    kwargs: dict[str, Any] = {key: value for key, value in defaults.items() if key in params}
    kwargs.update(def_kwargs)
    kwargs.update(options)
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    if out_channels is not None:
        kwargs["out_channels"] = out_channels
    if kwargs.get("spatial_dims", 3) != 3:
        dims = kwargs["spatial_dims"]
        raise NetworkDefError(f"{class_name}: spatial_dims is {dims!r}, but BNRank works on 3D volumes (3)")
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise NetworkDefError(
                f"{class_name} does not take {', '.join(unknown)}; it takes: {', '.join(params)}"
            )
    check_network_size(class_name, kwargs, max_parameters)
    try:
        model = cls(**kwargs)
    except _WRAP_ERRORS as exc:
        raise NetworkDefError(f"cannot build {class_name} from this network_def: {exc}") from exc
    if require_norm and not has_norm(model):
        raise NetworkDefError(
            f"{class_name} as configured has no normalisation layers ({ALL_NAMES}); norm-only evaluation "
            "trains the γ/β that follow a normalisation, so it has nothing to evaluate — set norm to 'batch', "
            "'instance' or 'group' (or pass require_norm=False to build it anyway)"
        )
    return model


def check_network_size(
    class_name: str, kwargs: Mapping[str, Any], max_parameters: int = DEFAULT_MAX_PARAMETERS
) -> int:
    """Estimated parameter count of `class_name(**kwargs)`; NetworkTooLargeError above `max_parameters`.

    Missing required arguments are left for the constructor to report (it fails before allocating);
    arguments that cannot be read as sizes are refused here, since what cannot be sized is not built.
    """
    params = inspect.signature(getattr(nets, class_name)).parameters
    variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    missing = [
        name
        for name, param in params.items()
        if param.default is inspect.Parameter.empty and param.kind not in variadic and name not in kwargs
    ]
    if missing:
        raise NetworkDefError(f"{class_name} needs {', '.join(missing)}; the network_def does not give it")
    try:
        estimate = estimate_parameters(class_name, kwargs)
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, ArithmeticError) as exc:
        raise NetworkDefError(f"cannot build {class_name} from this network_def: {exc}") from exc
    if estimate > max_parameters:
        raise NetworkTooLargeError(
            f"{class_name} as described would have about {estimate:,} parameters, above the limit of "
            f"{max_parameters:,}; it is refused before being built"
        )
    return estimate


def _network_architecture(
    name: str,
    description: str,
    class_name: str,
    def_kwargs: Mapping[str, Any],
    max_parameters: int = DEFAULT_MAX_PARAMETERS,
) -> Architecture:
    """An Architecture around `build_network`, with head and infer found by probing builds."""
    frozen = copy.deepcopy(dict(def_kwargs))  # the caller's dict may change later; the build must not

    def build(
        in_channels: int | None = None,
        out_channels: int | None = None,
        *,
        require_norm: bool = True,
        require_bn: bool | None = None,
        **options: Any,
    ) -> nn.Module:
        """Build with the def's settings; in/out channels and options override them.

        ``require_bn`` is the old name of ``require_norm`` (it required BatchNorm before norm-only evaluation).
        """
        return build_network(
            class_name,
            frozen,
            in_channels,
            out_channels,
            require_norm=require_norm if require_bn is None else require_bn,
            max_parameters=max_parameters,
            **options,
        )

    probe: Callable[..., nn.Module] = functools.partial(build, require_norm=False)
    head = probe_head(probe)
    return Architecture(
        name=name, description=description, build=build, head=head, infer=ProbeInfer(probe, head)
    )


def architecture_from_network_def(
    defn: Mapping[str, Any], *, max_parameters: int = DEFAULT_MAX_PARAMETERS
) -> Architecture:
    """Turn a bundle's network_def into an Architecture named `monai:<ClassName>`.

    Malformed or disallowed defs fail here, and so does a def estimated above `max_parameters` (every
    build of the returned Architecture is checked again, since in/out channels can change the count);
    a def that builds but has no normalisation layer at all fails in `build` (unless `require_norm=False`),
    so a caller can still inspect such a network on purpose. BatchNorm, InstanceNorm, GroupNorm and LayerNorm
    networks all build.
    """
    class_name, kwargs = parse_network_def(defn)
    return _network_architecture(
        name=f"monai:{class_name}",
        description=f"MONAI {class_name} from a network_def",
        class_name=class_name,
        def_kwargs=kwargs,
        max_parameters=max_parameters,
    )


MONAI_UNET = register(
    _network_architecture(
        name="monai_unet",
        description="MONAI UNet, channels (16, 32, 64, 128), strides (2, 2, 2), 2 residual units, BatchNorm",
        class_name="UNet",
        def_kwargs={
            "channels": (16, 32, 64, 128),
            "strides": (2, 2, 2),
            "num_res_units": 2,
            "norm": "batch",
        },
    )
)

MONAI_BASICUNET = register(
    _network_architecture(
        name="monai_basicunet",
        description="MONAI BasicUNet, default features, BatchNorm",
        class_name="BasicUNet",
        def_kwargs={"norm": ("batch", {"affine": True})},
    )
)
