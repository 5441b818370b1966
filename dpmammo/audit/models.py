"""The audit's models: trained by `fit` itself (the recipe, unchanged, on a known member split),
then scored on every record of the private pool and of the population (the validation set).

Training through `fit` keeps the audited procedure exactly the recipe's: the same optimiser,
DP-SGD with secret noise and Poisson sampling of the same unit, the same selection on validation,
the same privacy record. A head-only recipe's reference models would each recompute the frozen
backbone's features for their own subset (the feature cache is keyed by the training records),
so the features of the whole training set are computed once (or read from the cache the study's
own run filled) and each model's subset is written under the key `fit` will look up.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from dpmammo.config import parse_config
from dpmammo.data.images import N_VIEWS, apply_views, load_images, to_float
from dpmammo.data.manifest import PatchRecord
from dpmammo.data.sets import load_set, resolve_root
from dpmammo.errors import DpMammoError
from dpmammo.models import Classifier, load_weights
from dpmammo.models.config import flip_invariant
from dpmammo.device import resolve_device
from dpmammo.privacy.config import Unit
from dpmammo.runs import RunDir
from dpmammo.train import features as fc
from dpmammo.train.features import is_head_only
from dpmammo.train import fit
from dpmammo.train.build import initial_model
from dpmammo.train.config import TrainConfig
from dpmammo.train.members import AuditSplit, apply_audit_split, member_id


@dataclass
class Pool:
    """The private records of a recipe's training sets, their units, and the population records."""

    records: list[PatchRecord]
    units: list[str]  # unit ids, numbered by first appearance
    record_unit: np.ndarray  # record → unit number
    population: list[PatchRecord]


def load_pool(cfg: TrainConfig, unit: Unit) -> Pool:
    root = resolve_root(cfg.data.root)
    private = [r for name in cfg.data.train for r in load_set(root, name) if r.source == "real"]
    if not private:
        raise DpMammoError(f"the training sets {cfg.data.train} hold no private patches: nothing to audit")
    ids = [member_id(r, unit) for r in private]
    if unit == "patient" and not all(ids):
        raise DpMammoError("a private patch has no patient id (file names must start patient<ID>_); "
                           "audit by patch with `audit.unit: patch`")
    number: dict[str, int] = {}
    record_unit = np.array([number.setdefault(i, len(number)) for i in ids])
    return Pool(private, list(number), record_unit, load_set(root, cfg.data.val))


def with_split(cfg: TrainConfig, split: AuditSplit, pool_units: int) -> TrainConfig:
    """The recipe trained on `split`'s members of a pool of `pool_units` units. Under DP its batch is
    scaled by the members' share of the pool, so that the model keeps the recipe's sampling rate q,
    and with it σ and the steps: the mechanism whose promise is audited, not one of another q (and a
    recipe of nearly full batches, 512 of 578 patients, stays possible on half of them)."""
    data = cfg.model_dump(mode="json")
    data["data"]["audit_split"] = split.model_dump(mode="json")
    if cfg.privacy is not None:
        data["train"]["batch_size"] = max(1, round(cfg.train.batch_size * len(split.members) / pool_units))
    return parse_config(TrainConfig, data, f"audit model {split.role}")


def read_split(run: Path) -> tuple[TrainConfig, AuditSplit]:
    """A finished run's config and member split; refused for a run trained without a known split."""
    RunDir(run).require_finished()
    cfg = parse_config(TrainConfig, RunDir(run).read_config(), str(RunDir(run).config))
    if cfg.data.audit_split is None:
        raise DpMammoError(f"{run} was not trained on a known member split (its config has no data.audit_split): "
                           "an audit scores only models whose members it knows; audit the recipe with "
                           "`dpmammo audit CONFIG --out DIR`, which trains its own target and reference models")
    return cfg, cfg.data.audit_split


class FeaturePrimer:
    """Head-only recipes: the training records' features once, each model's subset where `fit`
    looks for it while that model trains (`primed`), and a trained head scored from the same
    features (`head_logits`)."""

    def __init__(self, cfg: TrainConfig, model: Classifier):
        root = resolve_root(cfg.data.root)
        self.records = [r for name in cfg.data.train for r in load_set(root, name)]
        self.n_views = N_VIEWS if cfg.train.augment == "flips" else 1
        self.model = model
        images = load_images(self.records, model.input_size)
        self.features = fc.cached_features(model, self.records, images, self.n_views)
        self.row = {r.path: i for i, r in enumerate(self.records)}

    @contextmanager
    def primed(self, split: AuditSplit) -> Iterator[None]:
        """`split`'s members' features under the cache key `fit` looks up, removed again on exit
        (unless that entry was there before: then it is left as it was)."""
        subset = apply_audit_split(self.records, split)
        path = fc.cache_path(self.model, subset, self.n_views)
        if path.is_file():
            yield
            return
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(self.features[[self.row[r.path] for r in subset]].clone(), tmp)
        tmp.replace(path)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    @torch.no_grad()
    def head_logits(self, run: Path, records: list[PatchRecord], n_views: int) -> np.ndarray:
        """(records, views, 2) logits of `run`'s head on training records, from the primed features;
        refused for more views than were computed."""
        if n_views > self.n_views:
            raise DpMammoError(f"{n_views} views asked of features computed in {self.n_views}")
        load_weights(self.model, RunDir(run).weights)
        rows = [self.row[r.path] for r in records]
        head = self.model.eval().forward_head
        return torch.stack([head(self.features[rows, v]) for v in range(n_views)], 1).double().numpy()


def train_models(cfg: TrainConfig, splits: list[AuditSplit], models_dir: Path, pool_units: int,
                 report: Callable[[str, str, float], None]) -> list[Path]:
    """Train (or reuse, when finished with the same config) one run per split of a pool of
    `pool_units` units; returns the run dirs."""
    primer = FeaturePrimer(cfg, initial_model(cfg)) if is_head_only(cfg) else None
    runs = []
    for split in splits:
        run, mcfg = models_dir / split.role, with_split(cfg, split, pool_units)
        t0 = time.time()
        if RunDir(run).is_finished:
            if not RunDir(run).has_config(mcfg):
                raise DpMammoError(f"{run} holds a model trained with another recipe or split; "
                                   "choose another --out")
            report(split.role, "reused", 0.0)
        else:
            with primer.primed(split) if primer is not None else nullcontext():
                fit(mcfg, run, progress=False)
            report(split.role, "trained", time.time() - t0)
        runs.append(run)
    return runs


@torch.no_grad()
def pool_logits(cfg: TrainConfig, runs: list[Path], records: list[PatchRecord]) -> np.ndarray:
    """(models, records, views, 2) logits of every run on `records` in every flip view: the 4 flips,
    or view 0 alone for a model whose features are the same in every flip (`flip_invariant`)."""
    device = resolve_device(cfg.train.device)
    model = initial_model(cfg).to(device)
    images = load_images(records, model.input_size)
    n_views = 1 if flip_invariant(cfg.model) else N_VIEWS
    feats = (fc.cached_features(model, records, images, n_views, device=device)
             if is_head_only(cfg) else None)
    out = np.empty((len(runs), len(records), n_views, 2), dtype=np.float64)
    for m, run in enumerate(runs):
        load_weights(model, RunDir(run).weights)
        model.eval()
        for v in range(n_views):
            if feats is not None:
                logits = model.forward_head(feats[:, v].to(device))
            else:
                views = torch.full((len(images),), v)
                logits = torch.cat([model(to_float(apply_views(chunk, views[:len(chunk)]).to(device)))
                                    for chunk in images.split(256)])
            out[m, :, v] = logits.float().cpu().numpy()
    return out


def margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """z_y − z_other of each record's label y (logits (..., records, views, 2), labels (records,))."""
    d = logits[..., 1] - logits[..., 0]
    return np.where(labels.astype(bool)[:, None], d, -d)
