"""`untrained`: the conditional generator at its random initialisation; it reads no data, so its
run is one public stage. The toy generator of tests/test_registry.py and docs/extending.md: one
module (config class and train function) that `register_generator` adds by one line."""

from __future__ import annotations

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
    from dpmammo.train.stage import Stage

    run = RunDir(out)
    # The stage holds the run directory, keeps log.txt and writes metrics.json's common fields;
    # no epochs here (a training generator calls stage.begin, end_epoch and checkpoint_if_due).
    with Stage.open(run, cfg, force, device="cpu", opening=f"{run.path} dpmammo {__version__} (untrained)",
                    epochs=0) as stage:
        save_weights(build_generator(cfg.model, cfg.train.seed), run.weights)
        own = non_dp_stage(stage="untrained", run=run.name, data=[], n_private=0)  # public: no private data
        privacy = write_privacy(run.privacy, own, [])
        return stage.finish({"history": [], "train_size": 0, "n_private": 0}, privacy, f"done; {privacy.describe()}")
