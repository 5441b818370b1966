"""A name → model registry, after timm's `create_model`.

Each model is registered with its own pydantic config class, so the allowed keys of a model
are exactly the fields of its config: `create_model("cnn-small", width=32)` validates `width`,
and an unknown name fails listing the registered ones.
"""

from __future__ import annotations

import importlib
from typing import Callable

from pydantic import ValidationError

from dpmammo.config import StrictModel, format_validation_error
from dpmammo.errors import DpMammoError
from dpmammo.models.classifier import Classifier

_REGISTRY: dict[str, tuple[type[StrictModel], Callable[[StrictModel], Classifier]]] = {}
# Modules that register the built-in models when imported; imported on the registry's first use
# (not by `import dpmammo.models`, which must stay free of torch and timm for the CLI).
BUILTIN_MODULES = ("dpmammo.models.cnn", "dpmammo.models.swin", "dpmammo.models.pixels", "dpmammo.models.scatter")


def _registry() -> dict[str, tuple[type[StrictModel], Callable[[StrictModel], Classifier]]]:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return _REGISTRY


def register_model(name: str, config_cls: type[StrictModel]):
    """Decorator: register `build(cfg) -> Classifier` under `name` with its config class."""

    def deco(build: Callable[[StrictModel], Classifier]):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = (config_cls, build)
        return build

    return deco


def list_models() -> list[str]:
    return sorted(_registry())


def model_config_class(name: str) -> type[StrictModel]:
    if name not in _registry():
        raise DpMammoError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _REGISTRY[name][0]


def create_model(name_or_cfg: str | StrictModel, **kwargs) -> Classifier:
    """Build a classifier from a registered name and keyword options, or from a model config.

    Example:
        >>> model = create_model("cnn-small", input_size=64)
    """
    if isinstance(name_or_cfg, str):
        cls = model_config_class(name_or_cfg)
        try:
            cfg = cls(name=name_or_cfg, **kwargs)
        except ValidationError as e:
            raise DpMammoError(format_validation_error(e, f"model {name_or_cfg}")) from None
    else:
        cfg = name_or_cfg
    _, build = _registry()[cfg.name]
    model = build(cfg)
    if cfg.weights is not None:
        from dpmammo.models.weights import load_weights

        load_weights(model, cfg.weights)
    if cfg.freeze_backbone:
        model.freeze_backbone()
    return model
