"""The malignancy-conditioned generators (MCGAN, DP-MERF): train (MCGAN optionally with a DP
discriminator, DP-MERF on one DP release), sample to a labelled folder with provenance, score
against real data.

Exports load on first use (dpmammo.lazy): `GanConfig` and `MerfConfig` need pydantic only, the rest torch.
"""

from dpmammo.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "dpmammo.gan.config": ["GanConfig"],
    "dpmammo.gan.merf": ["train_merf"],
    "dpmammo.gan.merf_config": ["MerfConfig"],
    "dpmammo.gan.sample": ["sample"],
    "dpmammo.gan.score": ["score", "train_score_classifier"],
    "dpmammo.gan.train": ["train_gan"],
})
