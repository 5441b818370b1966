"""The model a training stage starts from, built one way for `fit` and for whoever must rebuild
it exactly (an audit's reference models, their scoring): the run's seed, the model config, the
parent run's weights (`init_from`), the backbone frozen again after loading."""

from __future__ import annotations

import torch

from dpmammo.models import Classifier, create_model, load_init_weights
from dpmammo.runs import RunDir
from dpmammo.train.config import TrainConfig


def initial_model(cfg: TrainConfig) -> Classifier:
    """The model as `fit` holds it before its first step (on the CPU)."""
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.model)
    if cfg.init_from is not None:
        load_init_weights(model, RunDir(cfg.init_from).weights, cfg.init_weights)
        if cfg.model.freeze_backbone:
            model.freeze_backbone()  # re-freeze: loading does not touch requires_grad, but be explicit
    return model
