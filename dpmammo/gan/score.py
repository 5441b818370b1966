"""Score a synthetic folder against a real set: FRD, a classifier-feature Fréchet distance, and
class fidelity. Entry point: `score`.

- FRD, the Fréchet Radiomics Distance (Osuala et al., 2024, v0: the version behind the reference
  values real–real 3.48, real–synthetic 18.12, CBIS–BCDR 277.6), via the optional `frd-score`
  package: Fréchet distance between Gaussians fitted to min-max-normalised radiomics features.
- Classifier Fréchet distance: the same distance on a dpmammo classifier's `forward_features`
  (the FID recipe of Heusel et al., 2017, with a mammography classifier instead of Inception).
- Class fidelity: a classifier trained on real data scores the synthetic patches; the AUROC of
  their intended labels says whether the generator honours the malignancy condition.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from dpmammo.data.images import load_images, load_labels, to_float
from dpmammo.data.manifest import PatchRecord
from dpmammo.data.sets import load_set, resolve_root
from dpmammo.config import check_option
from dpmammo.errors import DpMammoError
from dpmammo.files import write_json_atomic
from dpmammo.runs import METRICS, RunDir

FRD_INSTALL = "pip install 'dpmammo[frd]' (frd-score and pyradiomics-bhklab; needs Python >= 3.10)"


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2(ΣaΣb)^½) between Gaussians fitted to rows of `a` and `b`.

    Tr((ΣaΣb)^½) is the sum of √λ over the eigenvalues of Σa^½ Σb Σa^½ (symmetric, positive
    semi-definite, and similar to ΣaΣb), as torchmetrics computes it: no matrix square root, so a
    singular covariance (a feature that never fires, fewer patches than features) needs no ε·I
    offset (pytorch-fid's fix) and raises no SciPy warning.
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    tr_covmean = np.sqrt(np.clip(lam, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_covmean)


def fd_conditioning_note(n_a: int, n_b: int, dims: int) -> Optional[str]:
    """A warning, in words, when a set has no more patches than features (its covariance is singular)."""
    if min(n_a, n_b) > dims:
        return None
    return (f"only {min(n_a, n_b)} patches for {dims} features: the covariance is singular and the distance "
            "ill-conditioned (noisy, biased upwards); use more patches for a value to compare")


@torch.no_grad()
def classifier_features(model, records: list[PatchRecord]) -> np.ndarray:
    model.eval()
    images = load_images(records, model.input_size)
    return torch.cat([model.forward_features(to_float(x)) for x in images.split(256)]).numpy().astype(np.float64)


MIN_SCORED = 10  # patches per set at least: Fréchet distances and class fidelity need a few of each class


def subsample(records: list[PatchRecord], max_images: Optional[int], seed: int) -> list[PatchRecord]:
    if max_images is None or len(records) <= max_images:
        return records
    idx = np.sort(np.random.default_rng(seed).choice(len(records), max_images, replace=False))
    return [records[i] for i in idx]


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def score_sets(folder: str | Path, ref: str, *, root: Optional[str | Path] = None, max_images: Optional[int] = None,
               seed: int = 0) -> tuple[list[PatchRecord], list[PatchRecord]]:
    """The synthetic and the real patches `score` compares; call it first to check the inputs
    before a scoring classifier is trained."""
    if max_images is not None:
        check_option("--max-images", max_images, minimum=MIN_SCORED)
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise DpMammoError(f"synthetic folder not found: {folder} (make one with `dpmammo gan sample`)")
    syn = subsample(load_set(folder, str(folder)), max_images, seed)
    real = subsample(load_set(resolve_root(root), ref), max_images, seed)
    if len({r.label for r in syn}) < 2:
        raise DpMammoError(f"{folder} holds one class only: class fidelity (AUROC) is undefined")
    return syn, real


def score(folder: str | Path, ref: str, *, classifier: str | Path, root: Optional[str | Path] = None,
          max_images: Optional[int] = None, frd: bool = True, frd_size: int = 128, seed: int = 0,
          out: Optional[str | Path] = None) -> dict:
    """Scores of the synthetic `folder` against real set `ref`, each with its wall time (also
    written to the JSON file `out` when given; the folder itself is never written to).

    Args:
        folder: a folder of labelled synthetic patches (`dpmammo gan sample` output or the
            published synthetic layout).
        ref: the real set, `dataset/split` under the data root.
        classifier: a finished classifier run trained on real data (see `train_score_classifier`).
        max_images: use at most this many patches of each set (seeded subsample), for speed.
        frd: compute FRD (needs the `frd` extra); frd_size: both sets are resized to this side for it.
    """
    from dpmammo.train.saved import load_run_model

    folder = Path(folder).expanduser().resolve()
    syn, real = score_sets(folder, ref, root=root, max_images=max_images, seed=seed)
    if not RunDir(classifier).is_finished:
        raise DpMammoError(f"--classifier {classifier} is not a finished classifier run (no {METRICS})")
    cfg, model = load_run_model(Path(classifier))
    result: dict = {"folder": str(folder), "ref": ref, "n_synthetic": len(syn), "n_ref": len(real),
                    "classifier": str(classifier)}
    result |= score_records(syn, real, model, frd=frd, frd_size=frd_size, test_flips=cfg.train.test_flips)
    if out is not None:
        write_json_atomic(out, result)
    return result


def score_records(syn: list[PatchRecord], real: list[PatchRecord], model, *, frd: bool = True,
                  frd_size: int = 128, test_flips: bool = False) -> dict:
    """The scores of `score` for patches already chosen: `syn` (labelled; both classes) against
    `real`, with `model` (a loaded classifier trained on real data) as feature extractor and judge.
    Every patch is resized to the model's input size, so sets of any resolution compare at one;
    `test_flips`: the judge's train.test_flips, so it scores as its own evaluation did."""
    from dpmammo.train.predict import predict_proba

    result: dict = {}
    labels = load_labels(syn).numpy()
    p, secs = timed(lambda: predict_proba(model, load_images(syn, model.input_size), flips=test_flips))
    result["class_fidelity"] = {"auroc": float(roc_auc_score(labels, p)), "seconds": secs,
                                "meaning": "AUROC of the intended labels under a classifier trained on real data"}
    fd, secs = timed(lambda: frechet_distance(classifier_features(model, real), classifier_features(model, syn)))
    result["classifier_fd"] = {"value": fd, "seconds": secs, "features": f"{model.num_features}-d forward_features"}
    note = fd_conditioning_note(len(real), len(syn), model.num_features)
    if note:
        result["classifier_fd"]["note"] = note
    result["frd"] = frd_score(real, syn, frd_size) if frd else {"value": None, "note": "not requested"}
    return result


def frd_score(real: list[PatchRecord], syn: list[PatchRecord], size: int) -> dict:
    """FRD v0 between two lists of files, or a 'not measured' record naming how to install it."""
    try:
        from frd_score import frd as frd_lib

        frd_lib._ensure_radiomics()
    except ImportError:
        return {"value": None, "note": f"not measured: FRD needs the frd extra: {FRD_INSTALL}"}
    value, secs = timed(frd_lib.compute_frd, [[r.path for r in real], [r.path for r in syn]],
                        frd_version="v0", resize_size=size, num_workers=2)
    return {"value": float(value), "seconds": secs, "version": "v0 (Osuala et al., 2024)", "resize": size}


def train_score_classifier(ref: str, val: str, out: str | Path, *, root: Optional[str | Path] = None,
                           input_size: int = 64, epochs: int = 15, progress: bool = False) -> Path:
    """A quick non-private cnn-small on real `ref` (selected on `val`), reused if already finished."""
    from dpmammo.models import CnnSmallConfig
    from dpmammo.train import DataConfig, TrainConfig, TrainSettings, fit

    out = Path(out)
    if RunDir(out).is_finished:
        return out
    cfg = TrainConfig(data=DataConfig(root=root, train=[ref], val=val),
                      model=CnnSmallConfig(input_size=input_size),
                      train=TrainSettings(epochs=epochs, batch_size=32, device="cpu"))
    fit(cfg, out, progress=progress)
    return out
