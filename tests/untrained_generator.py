"""`untrained`: the conditional generator at its random initialisation; it reads no data, so its
run is one public stage. The toy generator of tests/test_registry.py and docs/extending.md: one
module (config class and train function) that `register_generator` adds by one line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from dpmammo import __version__
from dpmammo.config import Seed, StrictModel
from dpmammo.gan.config import GeneratorShape


class NoData(StrictModel):
    root: Optional[Path] = Field(None, description="data folder (nothing is read from it)")
    train: list[str] = Field([], max_length=0, description="no training set: this generator sees no data")


class UntrainedSettings(StrictModel):
    seed: Seed = Field(0, description="the generator's initialisation")


class UntrainedConfig(StrictModel):
    generator: Literal["untrained"] = Field(..., description="which generator (dpmammo.gan.registry)")
    data: NoData = NoData()
    model: GeneratorShape = GeneratorShape(image_size=64)
    train: UntrainedSettings = UntrainedSettings()
    privacy: None = Field(None, description="nothing private is read: no privacy block")


def train_untrained(cfg: UntrainedConfig, out: str | Path, *, force: bool = False, progress: bool = True) -> dict:
    """Write the randomly initialised generator into run directory `out`."""
    from dpmammo.gan.models import build_generator
    from dpmammo.models import save_weights
    from dpmammo.privacy import non_dp_stage, write_privacy
    from dpmammo.runs import RunDir

    t0, run = time.time(), RunDir(out)
    with run.training(cfg, force), run.log_writer(f"start {run.path} dpmammo {__version__} (untrained)") as say:
        save_weights(build_generator(cfg.model, cfg.train.seed), run.weights)
        own = non_dp_stage(stage="untrained", run=run.name, data=[], n_private=0)  # public: no private data
        privacy = write_privacy(run.privacy, own, [])
        metrics = {"history": [], "train_size": 0, "n_private": 0, "wall_time_s": time.time() - t0,
                   "privacy_total": privacy.total.model_dump(mode="json"), "dpmammo_version": __version__}
        run.finish(metrics)  # metrics.json last: the run is finished
        say(f"done; {privacy.describe()}")
    return metrics
