"""`scatter`: ScatterNet features (a fixed wavelet scattering transform) and a linear head, or with
`head: cnn` a small CNN on the coefficient maps (ScatterCnnHead).

Tramèr & Boneh (ICLR 2021), "Differentially Private Learning Needs Better Features (or Much More
Data)": handcrafted scattering features (Oyallon & Mallat's ScatterNet, here kymatio's
`Scattering2D`, J = 2 scales and L = 8 orientations in their setup) with a DP linear model beat
end-to-end DP CNNs at small ε. The transform is a fixed filter bank: it costs no privacy, and with
`train.feature_cache` it runs once per image and flip view (once per image when symmetrised, step 6).

Backbone, for a grayscale patch x of side S = input_size:

1. x is standardised per image (zero mean, unit variance, as `pixels` and `cnn-small` do);
2. the order-2 scattering transform gives K = 1 + J·L + L²·J(J−1)/2 channels of side S / 2^J
   (81 channels for J = 2, L = 8);
3. each channel is average-pooled to `pool` × `pool`;
4. GroupNorm over the K channels in `groups` groups, without affine parameters: each group of
   each image is set to zero mean and unit variance from that image's own coefficients;
5. flattened to K·pool² features;
6. with `symmetrize: dihedral`, steps 1–5 are run on the patch's 8 flips and transposes (the
   symmetries of the square) and the 8 feature vectors averaged: features invariant to them. A
   mass has no preferred orientation, and for a linear head this is test-time augmentation over
   all 8 built into the features (a flip-only version is `train.test_flips`, over 4).

Every step is per sample: no statistic of the data set enters the features, so the backbone is a
public function and spends nothing. Tramèr & Boneh also normalise with each channel's mean and
variance over the training set, released with noise and composed into their budget: any such
data-dependent normalisation would have to be DP and enter the ledger as a stage of its own. The
per-sample GroupNorm here is their data-independent variant.

With `public_pca` (PublicPcaConfig), a further step projects the K·pool² features on their top k
principal components over procedural images (dpmammo.data.procedural: a program with a seed made
every one, so the basis is public and spends nothing either), each component divided by its
standard deviation there and all multiplied by √(K·pool²/k), so that a procedural image's features
keep the squared norm K·pool² of the unprojected ones and the recipe's C and learning rate keep
their scale. Why: DP-SGD's noise has the same norm in every coordinate of the head, so a head on
k ≪ K·pool² coordinates that carry most of the images' variance gets far less noise per unit of
signal (Tramèr & Boneh's point about feature dimension; Zhou, Wu & Banerjee 2021, "Bypassing the
Ambient Dimension", project onto a public subspace for the same reason). The basis is fitted once
per (settings, procedural set, versions) and kept in the user cache. It is part of the model's
state dict, so the weights a run saves carry the exact projection it was trained with; a
checkpoint does not (it holds the head), and a resumed run takes the basis from the cache, or fits
it again, deterministically on one installation.

With `with_pixels` (PublicPixelsConfig), the `pixels` model's features (the patch average-pooled
and standardised) are projected the same way on the same procedural images and appended: the
mass's coarse shape beside the scattering's texture (ProjectedScatter).

kymatio 0.3.0's top-level `kymatio.torch` imports its 3-d frontend, which needs `sph_harm` (gone
from scipy 1.17); the 2-d torch frontend class is imported from its own module instead.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Literal, Optional

import torch
from torch import nn

from dpmammo.data.sets import default_cache_dir
from dpmammo.errors import DpMammoError
from dpmammo.files import atomic_path
from dpmammo.models.classifier import Classifier
from dpmammo.models.cnn import _Standardize
from dpmammo.models.config import PublicPcaConfig, ScatterConfig, scattering_channels
from dpmammo.models.pixels import PixelFeatures

BASIS_FORMAT = 1  # bump when the basis's computation changes: cached bases of other formats are not read


def _scattering_2d(J: int, L: int, size: int) -> nn.Module:
    """kymatio's torch Scattering2D for size × size inputs, its filters kept out of the state dict."""
    try:
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    except ImportError as e:
        raise DpMammoError(f"the scatter model needs kymatio 0.3 ({e}); "
                           "install it with: pip install kymatio==0.3.0") from None
    scattering = ScatteringTorch2D(J=J, shape=(size, size), L=L)
    # The filters are a fixed function of (J, L, size), rebuilt on construction: no weights to save,
    # load or release.
    for name, buf in list(scattering.named_buffers(recurse=False)):
        scattering.register_buffer(name, buf, persistent=False)
    return scattering


class ScatterBackbone(nn.Module):
    """(N, 1, S, S) in [0, 1] → (N, K·pool²) per-sample normalised scattering features."""

    def __init__(self, *, input_size: int, J: int, L: int, pool: int, groups: int,
                 symmetrize: Literal["none", "dihedral"] = "none"):
        super().__init__()
        self.input_size, self.J, self.L, self.symmetrize = input_size, J, L, symmetrize
        self.channels = scattering_channels(J, L)
        self.num_features = self.channels * pool ** 2
        self.standardize = _Standardize()
        self.scattering = _scattering_2d(J, L, input_size)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.norm = nn.GroupNorm(groups, self.channels, affine=False)

    def extra_repr(self) -> str:
        # The feature cache keys on the backbone's repr: everything that shapes the features shows.
        # (symmetrize only when on, so the cached features of earlier runs keep their keys.)
        return (f"input_size={self.input_size}, J={self.J}, L={self.L}"
                + (f", symmetrize={self.symmetrize}" if self.symmetrize != "none" else ""))

    def _features(self, x):
        coeffs = self.scattering(self.standardize(x).contiguous())  # N, 1, K, S/2^J, S/2^J
        return self.norm(self.pool(coeffs.flatten(1, 2))).flatten(1)

    def forward(self, x):
        if self.symmetrize == "none":
            return self._features(x)
        # One transform at a time: a batch of all 8 would hold 8× the scattering's intermediates.
        total = None
        for xt in (x, x.transpose(-1, -2)):
            for dims in ((), (-1,), (-2,), (-1, -2)):
                f = self._features(xt.flip(dims) if dims else xt)
                total = f if total is None else total + f
        return total / 8


class ScatterCnnHead(nn.Sequential):
    """(N, K·pool²) features → (N, 2): the K coefficient maps of side `pool` (the backbone flattens
    them channel by channel), a 1×1 conv to `width` channels, a 3×3 conv, a 2×2 max-pool, a 3×3
    conv (each conv followed by GroupNorm in 8 groups and ReLU), a global average and a linear layer.

    Tramèr & Boneh's ScatterNet+CNN: a CNN on the scattering maps instead of a linear model on their
    pooled values. Without privacy on cbis-ddsm/train's patients it ranks malignancy better than the
    linear head on J = 4 features (5-fold cross-validation, benchmarks/README.md). Its layers are
    per-sample (GroupNorm, not BatchNorm), so it trains under DP-SGD too. Default (random) start:
    a zero start would leave every layer below the last without a gradient in the first step."""

    def __init__(self, channels: int, side: int, width: int):
        def norm_relu():
            return [nn.GroupNorm(8, width), nn.ReLU()]

        super().__init__(nn.Unflatten(1, (channels, side, side)),
                         nn.Conv2d(channels, width, 1), *norm_relu(),
                         nn.Conv2d(width, width, 3, padding=1), *norm_relu(), nn.MaxPool2d(2),
                         nn.Conv2d(width, width, 3, padding=1), *norm_relu(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2))


class PublicProjection(nn.Module):
    """(N, D) → (N, k): ((x − mean) · componentsᵀ) · scale, the buffers fitted by `fit_public_basis`."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("components", components)
        self.register_buffer("scale", scale)

    def forward(self, x):
        return (x - self.mean) @ self.components.T * self.scale


class ProjectedScatter(nn.Module):
    """The scattering backbone, then its public projection; with `pixels`, the projected pixel
    features appended (`with_pixels`) and the two parts scaled by 1/√2 together: on procedural
    images the joined squared norm is then (K·pool² + resolution²) / 2, 776 for the presets' 1296 +
    256, 0.6 times the scattering part's alone. That factor is the one measured on validation
    (benchmarks/README.md), not a derived one: with a clipped head it acts as a smaller step."""

    def __init__(self, scatter: ScatterBackbone, projection: PublicProjection,
                 pixels: Optional[PixelFeatures] = None, pixels_projection: Optional[PublicProjection] = None):
        super().__init__()
        self.scatter, self.projection = scatter, projection
        self.pixels, self.pixels_projection = pixels, pixels_projection
        self.input_size = scatter.input_size

    def forward(self, x):
        z = self.projection(self.scatter(x))
        if self.pixels is None:
            return z
        return torch.cat([z, self.pixels_projection(self.pixels(x))], dim=1) * (1 / math.sqrt(2))


@torch.no_grad()
def fit_public_basis(backbone: ScatterBackbone | PixelFeatures, pca: PublicPcaConfig, *,
                     setting: str = "public_pca.components") -> PublicProjection:
    """The projection of the module docstring (`public_pca`, on the features of steps 1–6), fitted
    on `pca.images_per_kind` images of each of `pca.kinds` (indices 0..n−1 of `pca.seed`): no file
    of any data root is opened. Each component's sign is fixed (its largest entry positive), so the
    basis does not depend on the SVD routine's choice of signs."""
    from dpmammo.data.procedural.store import generate

    feats = []
    for kind in pca.kinds:
        images, _ = generate(kind, seed=pca.seed, start=0, stop=pca.images_per_kind, size=backbone.input_size)
        for chunk in images.split(256):
            feats.append(backbone(chunk.float().div_(255.0)).double())
    x = torch.cat(feats)
    mean = x.mean(0)
    _, singular, vt = torch.linalg.svd(x - mean, full_matrices=False)
    k = pca.components
    comps = vt[:k]
    comps = comps * torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    std = singular[:k] / math.sqrt(len(x))
    if not bool((std > 1e-8 * std[0]).all()):
        raise DpMammoError(f"the procedural images span fewer than {k} directions of the features: "
                           f"lower {setting} or add kinds or images")
    scale = math.sqrt(x.shape[1] / k) / std
    return PublicProjection(mean.float(), comps.float(), scale.float())


def public_basis(backbone: ScatterBackbone | PixelFeatures, pca: PublicPcaConfig, *,
                 setting: str = "public_pca.components") -> PublicProjection:
    """`fit_public_basis`, kept in the user cache (public data only) under a key of everything it
    depends on: the backbone's settings, the procedural kinds with their parameters, dpmammo's,
    kymatio's and torch's versions, and BASIS_FORMAT."""
    import kymatio

    from dpmammo import __version__
    from dpmammo.data.procedural.kinds import KINDS

    params = json.dumps({k: KINDS[k].params for k in pca.kinds}, sort_keys=True)
    key = hashlib.sha256(f"v{BASIS_FORMAT} dpmammo {__version__} kymatio {kymatio.__version__} torch {torch.__version__} "
                         f"{backbone!r} {pca.model_dump_json()} {params}".encode()).hexdigest()
    path = default_cache_dir() / "features" / f"public-pca-{key}.pt"
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 — truncated or corrupt: torch raises several kinds
            raise DpMammoError(f"cannot read the cached public basis {path} ({type(e).__name__}): delete it and it is "
                               "fitted again") from None
        d, k = backbone.num_features, pca.components
        shapes = {name: tuple(t.shape) for name, t in state.items()}
        if shapes != {"mean": (d,), "components": (k, d), "scale": (k,)}:
            raise DpMammoError(f"{path} is not a public basis of {k} components of {d} features (it holds {shapes}): "
                               "delete it and it is fitted again")
        return PublicProjection(state["mean"], state["components"], state["scale"])
    projection = fit_public_basis(backbone, pca, setting=setting)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(projection.state_dict(), tmp)
    return projection


def scatter(cfg: ScatterConfig) -> Classifier:
    backbone = ScatterBackbone(input_size=cfg.input_size, J=cfg.J, L=cfg.L, pool=cfg.pool, groups=cfg.groups,
                               symmetrize=cfg.symmetrize)
    if cfg.public_pca is not None:
        pixels = pixels_projection = None
        if cfg.with_pixels is not None:
            pixels = PixelFeatures(input_size=cfg.input_size, resolution=cfg.with_pixels.resolution)
            pixels_projection = public_basis(pixels, cfg.public_pca.model_copy(
                update={"components": cfg.with_pixels.components}), setting="with_pixels.components")
        backbone = ProjectedScatter(backbone, public_basis(backbone, cfg.public_pca), pixels, pixels_projection)
    if cfg.head == "cnn":
        head = ScatterCnnHead(scattering_channels(cfg.J, cfg.L), cfg.pool, cfg.cnn_width)
        return Classifier(backbone, head, input_size=cfg.input_size, num_features=cfg.num_features)
    head = nn.Linear(cfg.num_features, 2)
    # Zero start: the head is the whole model, and the few clipped, noisy DP steps of its recipes would
    # first have to undo a random start. With public_pca each of the k coordinates has variance D/k
    # at the unprojected norm, so a default start's logits are √(D/k) times larger than on D features.
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return Classifier(backbone, head, input_size=cfg.input_size, num_features=cfg.num_features)
