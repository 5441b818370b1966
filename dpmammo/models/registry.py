"""A name → model registry, after timm's `create_model`, reading the one table
`dpmammo.models.config.MODELS`.

Each model has its own pydantic config class, so the allowed keys of a model are exactly the
fields of its config: `create_model("cnn-small", width=32)` validates `width`, and an unknown name
fails listing the registered ones.
"""

from __future__ import annotations

from pydantic import ValidationError

from dpmammo.config import StrictModel, format_validation_error
from dpmammo.errors import DpMammoError
from dpmammo.lazy import load_spec
from dpmammo.models.classifier import Classifier
from dpmammo.models.config import MODELS


def list_models() -> list[str]:
    return sorted(MODELS)


def model_config_class(name: str) -> type[StrictModel]:
    if name not in MODELS:
        raise DpMammoError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return MODELS[name][0]


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
    model_config_class(cfg.name)
    model = load_spec(MODELS[cfg.name][1])(cfg)
    if cfg.weights is not None:
        from dpmammo.models.weights import load_weights

        load_weights(model, cfg.weights)
    if cfg.freeze_backbone:
        model.freeze_backbone()
    return model
