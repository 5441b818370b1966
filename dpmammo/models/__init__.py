"""Models: a registry of name → classifier (backbone + head). See `create_model`."""

from dpmammo.models import cnn as _cnn  # noqa: F401  (registers cnn-small)
from dpmammo.models import swin as _swin  # noqa: F401  (registers swin_t)
from dpmammo.models.classifier import Classifier
from dpmammo.models.cnn import CnnSmallConfig
from dpmammo.models.registry import create_model, list_models, model_config_class, register_model
from dpmammo.models.swin import SwinTConfig
from dpmammo.models.weights import load_weights, save_weights

ModelConfig = CnnSmallConfig | SwinTConfig

__all__ = ["Classifier", "CnnSmallConfig", "SwinTConfig", "ModelConfig", "create_model", "list_models",
           "model_config_class", "register_model", "load_weights", "save_weights"]
