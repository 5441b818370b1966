"""One training stage (DP or not), checkpoints and resume. Entry point: `fit`.

Exports load on first use (dpmammo.lazy): the configs need pydantic only, `fit` needs torch.
"""

from dpmammo.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "dpmammo.train.config": ["DataConfig", "OptimConfig", "TrainConfig", "TrainSettings"],
    "dpmammo.train.loop": ["fit"],
})
