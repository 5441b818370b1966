"""A finished classifier run's config and model, for the stages above training that use one (evaluation,
a generator's judge, the study's quality step): low in the house, so none of them imports another."""

from __future__ import annotations

from pathlib import Path

from dpmammo.config import parse_config
from dpmammo.models import create_model, load_weights
from dpmammo.models.classifier import Classifier
from dpmammo.runs import RunDir, run_kind
from dpmammo.train.config import TrainConfig


def load_run_model(run_dir: Path) -> tuple[TrainConfig, Classifier]:
    """The run's config and its selected model (weights loaded strictly). FileNotFoundError when
    the run is not finished; a generator run is named as such."""
    run = RunDir(run_dir)
    if not run.is_finished:
        raise FileNotFoundError(run.path)
    cfg = run.read_config_as(lambda data, source: parse_config(TrainConfig, data, source), "classifier",
                             is_other=lambda data: run_kind(data) == "generator", other_kind="generator",
                             hint="evaluate a run made by `dpmammo train`, or sample it with `dpmammo gan sample`")
    # The run's own weight file is the whole model: skip the sources it was initialised from.
    sources = {"weights": None, "backbone_weights": None, "pretrained": False, "freeze_backbone": False}
    model_cfg = cfg.model.model_copy(update={k: v for k, v in sources.items() if k in type(cfg.model).model_fields})
    model = create_model(model_cfg)
    load_weights(model, run.weights)
    return cfg, model
