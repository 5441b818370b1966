"""`scatter`: ScatterNet features (a fixed wavelet scattering transform) and a linear head.

Tramèr & Boneh (ICLR 2021), "Differentially Private Learning Needs Better Features (or Much More
Data)": handcrafted scattering features (Oyallon & Mallat's ScatterNet, here kymatio's
`Scattering2D`, J = 2 scales and L = 8 orientations in their setup) with a DP linear model beat
end-to-end DP CNNs at small ε. The transform is a fixed filter bank: it costs no privacy, and with
`train.feature_cache` it runs once per image and flip view.

Backbone, for a grayscale patch x of side S = input_size:

1. x is standardised per image (zero mean, unit variance, as `pixels` and `cnn-small` do);
2. the order-2 scattering transform gives K = 1 + J·L + L²·J(J−1)/2 channels of side S / 2^J
   (81 channels for J = 2, L = 8);
3. each channel is average-pooled to `pool` × `pool`;
4. GroupNorm over the K channels in `groups` groups, without affine parameters: each group of
   each image is set to zero mean and unit variance from that image's own coefficients;
5. flattened to K·pool² features.

Every step is per sample: no statistic of the data set enters the features, so the backbone is a
public function and spends nothing. Tramèr & Boneh also normalise with each channel's mean and
variance over the training set, released with noise and composed into their budget: any such
data-dependent normalisation would have to be DP and enter the ledger as a stage of its own. The
per-sample GroupNorm here is their data-independent variant.

kymatio 0.3.0's top-level `kymatio.torch` imports its 3-d frontend, which needs `sph_harm` (gone
from scipy 1.17); the 2-d torch frontend class is imported from its own module instead.
"""

from __future__ import annotations

from torch import nn

from dpmammo.errors import DpMammoError
from dpmammo.models.classifier import Classifier
from dpmammo.models.cnn import _Standardize
from dpmammo.models.config import ScatterConfig, scattering_channels


def _scattering_2d(J: int, L: int, size: int) -> nn.Module:
    """kymatio's torch Scattering2D for size × size inputs, its filters kept out of the state dict."""
    try:
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    except ImportError as e:
        raise DpMammoError(f"the scatter model needs kymatio 0.3 ({e}); "
                           "install it with: pip install kymatio==0.3.0") from None
    scattering = ScatteringTorch2D(J=J, shape=(size, size), L=L)
    # The filters are a fixed function of (J, L, size), rebuilt on construction: no weights to save,
    # load or release, and a checkpoint of the model holds its head alone.
    for name, buf in list(scattering.named_buffers(recurse=False)):
        scattering.register_buffer(name, buf, persistent=False)
    return scattering


class ScatterBackbone(nn.Module):
    """(N, 1, S, S) in [0, 1] → (N, K·pool²) per-sample normalised scattering features."""

    def __init__(self, *, input_size: int, J: int, L: int, pool: int, groups: int):
        super().__init__()
        self.input_size, self.J, self.L = input_size, J, L
        self.channels = scattering_channels(J, L)
        self.standardize = _Standardize()
        self.scattering = _scattering_2d(J, L, input_size)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.norm = nn.GroupNorm(groups, self.channels, affine=False)

    def extra_repr(self) -> str:
        # The feature cache keys on the backbone's repr: everything that shapes the features shows.
        return f"input_size={self.input_size}, J={self.J}, L={self.L}"

    def forward(self, x):
        coeffs = self.scattering(self.standardize(x).contiguous())  # N, 1, K, S/2^J, S/2^J
        return self.norm(self.pool(coeffs.flatten(1, 2))).flatten(1)


def scatter(cfg: ScatterConfig) -> Classifier:
    backbone = ScatterBackbone(input_size=cfg.input_size, J=cfg.J, L=cfg.L, pool=cfg.pool, groups=cfg.groups)
    num_features = backbone.channels * cfg.pool ** 2
    return Classifier(backbone, nn.Linear(num_features, 2), input_size=cfg.input_size, num_features=num_features)
