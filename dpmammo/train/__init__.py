"""One training stage (DP or not), checkpoints and resume. Entry point: `fit`."""

from dpmammo.train.config import DataConfig, OptimConfig, TrainConfig, TrainSettings
from dpmammo.train.loop import fit

__all__ = ["DataConfig", "OptimConfig", "TrainConfig", "TrainSettings", "fit"]
