"""The malignancy-conditioned GAN (MCGAN): train (optionally with a DP discriminator), sample to
a labelled folder with provenance, score against real data."""

from dpmammo.gan.config import GanConfig
from dpmammo.gan.sample import sample
from dpmammo.gan.score import score, train_score_classifier
from dpmammo.gan.train import train_gan

__all__ = ["GanConfig", "sample", "score", "train_gan", "train_score_classifier"]
