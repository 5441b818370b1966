"""Models: a registry of name → classifier (backbone + head). See `create_model`.

Exports load on first use (dpmammo.lazy): the config classes need pydantic only, the rest torch.
"""

from dpmammo.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "dpmammo.models.config": ["MODELS", "CnnSmallConfig", "ModelConfig", "PixelsConfig", "ScatterConfig", "SwinTConfig"],
    "dpmammo.models.classifier": ["Classifier"],
    "dpmammo.models.registry": ["create_model", "list_models", "model_config_class"],
    "dpmammo.models.weights": ["load_init_weights", "load_weights", "save_weights"],
})
