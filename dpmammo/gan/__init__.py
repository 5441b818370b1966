"""The malignancy-conditioned GAN (MCGAN): train (optionally with a DP discriminator), sample to
a labelled folder with provenance, score against real data.

Exports load on first use (dpmammo.lazy): `GanConfig` needs pydantic only, the rest torch.
"""

from dpmammo.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "dpmammo.gan.config": ["GanConfig"],
    "dpmammo.gan.sample": ["sample"],
    "dpmammo.gan.score": ["score", "train_score_classifier"],
    "dpmammo.gan.train": ["train_gan"],
})
