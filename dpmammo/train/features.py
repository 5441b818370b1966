"""Backbone features computed once, for training a head on a frozen backbone.

With the backbone frozen, its output for a given image and flip view never changes, so
recomputing it at every step of every epoch (as the reference study does with Swin-T) is pure
waste. `cached_features` computes `model.forward_features` once per image and per view (the 4
flip views of dpmammo.data.images), keeps them in memory and on disk under
`<cache dir>/features/<key>.pt`, keyed by a hash of the backbone weights, the images' files and
the input size, so every later run with the same backbone and data reuses them.

Training on the cache is the same procedure as without it: each sample of each step takes the
view its random flip would have produced (`take_views`, fed by the very same random stream).
Features are computed in eval mode under no_grad, which is what a frozen backbone does anyway
(`Classifier.train` keeps a frozen backbone in eval mode).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from dpmammo.data.images import N_VIEWS, VIEWS, apply_views, to_float
from dpmammo.data.manifest import PatchRecord
from dpmammo.data.sets import default_cache_dir
from dpmammo.errors import DpMammoError
from dpmammo.files import atomic_path
from dpmammo.models.classifier import Classifier
from dpmammo.train.predict import malignant_proba

CACHE_VERSION = 1  # bump when the way features are computed changes


def is_head_only(cfg) -> bool:
    """Whether a run of TrainConfig `cfg` trains a head on a fixed backbone's cached features (and
    is scored from them): `model.freeze_backbone` with `train.feature_cache`."""
    return bool(cfg.model.freeze_backbone and cfg.train.feature_cache)


def features_dir() -> Path:
    return default_cache_dir() / "features"


def feature_key(model: Classifier, records: list[PatchRecord], n_views: int) -> str:
    """sha256 of everything the features depend on: backbone weights, code path and settings (its
    repr: parameter-free backbones such as `pixels` and `scatter` differ in nothing else), the image
    files (path, size, mtime), the input size and the views."""
    h = hashlib.sha256(f"v{CACHE_VERSION} {type(model.backbone).__qualname__} {model.backbone!r} {model.input_size} "
                       f"{VIEWS[:n_views]}".encode())
    for name, t in sorted(model.backbone.state_dict().items()):
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for r in records:
        st = os.stat(r.path)
        h.update(f"{r.path} {st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()


def cache_path(model: Classifier, records: list[PatchRecord], n_views: int, cache_dir: Path | None = None) -> Path:
    """Where `cached_features` keeps (and looks for) the features of `records` under `model`."""
    return (Path(cache_dir) if cache_dir is not None else features_dir()) / f"{feature_key(model, records, n_views)}.pt"


@torch.no_grad()
def compute_features(model: Classifier, images: torch.Tensor, n_views: int, *,
                     device: torch.device | str = "cpu", batch_size: int = 64) -> torch.Tensor:
    """float32 (N, n_views, F): forward_features of every image (uint8 (N, 1, S, S)) in every view."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(images), n_views, model.num_features)
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        for v in range(n_views):
            x = apply_views(chunk, torch.full((len(chunk),), v))
            out[start:start + len(chunk), v] = model.forward_features(to_float(x.to(device))).float().cpu()
    model.train(was_training)
    return out


def cached_features(model: Classifier, records: list[PatchRecord], images: torch.Tensor, n_views: int, *,
                    device: torch.device | str = "cpu", cache_dir: Path | None = None,
                    say=lambda msg: None) -> torch.Tensor:
    """Features of `images` (in `records` order), read from the disk cache or computed and stored."""
    if not model.is_backbone_frozen:
        raise DpMammoError("feature caching needs a frozen backbone (model.freeze_backbone: true)")
    path = cache_path(model, records, n_views, cache_dir)
    expected = (len(images), n_views, model.num_features)
    if path.is_file():
        feats = torch.load(path, map_location="cpu", weights_only=True)
        if tuple(feats.shape) == expected:
            say(f"features: reused {path}")
            return feats
        say(f"features: {path} has shape {tuple(feats.shape)}, expected {expected}; recomputing")
    feats = compute_features(model, images, n_views, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(feats, tmp)
    say(f"features: computed {expected} and stored {path}")
    return feats


def take_views(features: torch.Tensor, idx: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
    """(n, F): sample idx[i] in view views[i] (view 0, the unflipped image, when views is None)."""
    v = views if views is not None else torch.zeros(len(idx), dtype=torch.long)
    return features[idx, v]


@torch.no_grad()
def head_proba(model: Classifier, features: torch.Tensor, *, flips: bool = False,
               device: torch.device | str = "cpu") -> np.ndarray:
    """P(malignant) from cached features (N, views, F), the way predict_proba scores images: from
    view 0, or with `flips` from the mean logits over all N_VIEWS views.

    Only the head changes mode: switching a whole Swin-T to eval and back walks ~200 modules,
    which every epoch of every head-only run would pay for validation."""
    if flips and features.shape[1] != N_VIEWS:
        raise ValueError(f"flips need features of all {N_VIEWS} views, got {features.shape[1]}")
    was_training = model.head.training
    model.head.eval()
    views = range(N_VIEWS) if flips else range(1)
    proba = malignant_proba([model.forward_head(features[:, v].to(device)) for v in views])
    model.head.train(was_training)
    return proba
