"""`dpmammo pretrain`: train a classifier backbone on procedural images only, a public stage.

Two objectives (`objective.name`):
- `supervised` (default): cross-entropy on the processes' own labels, each image's class
  "<kind>/<class>" as its process drew it (dead-leaves shape family, spectral slope bin,
  random-generator activation, mammo-phantom margin). The default for a 2-core CPU: one forward
  pass per image instead of two augmented views, and the mammo-phantom label is the cue the
  downstream task needs (spiculated or irregular margins against round, smooth ones).
- `align-uniform`: self-supervised on two augmented views (Wang & Isola 2020), as Baradad et al.
  and DP-RandP pretrain; held-out k-NN accuracy on the processes' labels is reported.

Nothing here opens a file under a data root: the images come from `generate` or from folders
written by `dpmammo data procedural`. The run is a normal run directory (config.yaml,
model.safetensors, metrics.json, log.txt, privacy.json) whose privacy.json holds one `public` stage
naming each process, its seed and index range, so a DP run started from it (`init_from`) states
the same total as one from random initialisation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from dpmammo import __version__
from dpmammo.data.images import N_VIEWS, apply_views, to_float
from dpmammo.data.procedural.kinds import KINDS
from dpmammo.data.procedural.store import generate, read_procedural
from dpmammo.errors import DpMammoError
from dpmammo.models import create_model, save_weights
from dpmammo.privacy.ledger import StageSpend, write_privacy
from dpmammo.progress import StepProgress
from dpmammo.runs import RunDir
from dpmammo.train.loop import build_optimizer
from dpmammo.train.pretrain_config import AlignUniform, PretrainConfig
from dpmammo.train.stage import Stage


@dataclass
class Source:
    """One process's share of the data: its training images and labels, and where its held-out ones start."""

    kind: str
    seed: int
    classes: tuple[str, ...]
    images: torch.Tensor  # (N, 1, S, S) uint8
    labels: torch.Tensor  # (N,) class index within the kind
    origin: str  # "on the fly" or the folder

    @property
    def n(self) -> int:
        return len(self.labels)


def pretrain(cfg: PretrainConfig, out: str | Path, *, force: bool = False, progress: bool = True) -> dict:
    """Pretrain into run directory `out` and return its metrics (resumes an interrupted run).

    Example:
        >>> pretrain(load_config(PretrainConfig, "configs/pretrain-procedural.yaml"), "runs/pretrain")  # doctest: +SKIP
    """
    target = Path(out).expanduser().resolve()
    for folder in cfg.data.folders:
        f = Path(folder).expanduser().resolve()
        if target == f or target.is_relative_to(f) or f.is_relative_to(target):
            raise DpMammoError(f"--out {out} is, holds or lies inside the input folder {folder}; choose another --out")
    run = RunDir(out)
    with Stage.open(run, cfg, force, device=cfg.train.device, opening=f"pretrain {run.path} dpmammo {__version__}",
                    epochs=cfg.train.epochs, checkpoint_every_s=cfg.train.checkpoint_every_s) as stage:
        return _pretrain_run(cfg, stage, progress)


def load_sources(cfg: PretrainConfig, say: Callable[[str], None]) -> list[Source]:
    size, d = cfg.model.input_size, cfg.data
    sources = []
    for folder in d.folders:
        images, labels, prov = read_procedural(folder)
        if prov["kind"] in {s.kind for s in sources}:
            raise DpMammoError(f"data.folders: two folders hold {prov['kind']}; one folder per kind (its classes "
                               "would be counted twice)")
        if prov["size"] != size:
            raise DpMammoError(f"{folder} holds {prov['size']} px images; model.input_size is {size}: regenerate the "
                               f"set with --size {size} or change the model")
        sources.append(Source(prov["kind"], prov["seed"], tuple(prov["classes"]),
                              torch.from_numpy(np.array(images)).unsqueeze(1), torch.from_numpy(labels),
                              str(Path(folder).expanduser().resolve())))
        say(f"{folder}: {prov['n']} images of {prov['kind']} (seed {prov['seed']}), provenance checked")
    for kind in d.kinds:
        if kind in {s.kind for s in sources}:
            raise DpMammoError(f"data: {kind} comes both from a folder and from kinds; keep one")
        t = time.time()
        images, labels = generate(kind, seed=d.seed, start=0, stop=d.n, size=size)
        sources.append(Source(kind, d.seed, KINDS[kind].classes, images, labels, "on the fly"))
        say(f"generated {d.n} images of {kind} (seed {d.seed}, {size} px) in {time.time() - t:.1f} s")
    return sources


def _pretrain_run(cfg: PretrainConfig, stage: Stage, progress: bool) -> dict:
    run, say, device = stage.run, stage.say, stage.device
    torch.manual_seed(cfg.train.seed)
    size = cfg.model.input_size

    # Data: each process's training images, and its next n_val indices as the held-out set.
    sources = load_sources(cfg, say)
    offsets = np.cumsum([0] + [len(s.classes) for s in sources])
    classes = [f"{s.kind}/{c}" for s in sources for c in s.classes]
    images = torch.cat([s.images for s in sources])
    labels = torch.cat([s.labels + int(o) for s, o in zip(sources, offsets)])
    val = [generate(s.kind, seed=s.seed, start=s.n, stop=s.n + cfg.data.n_val, size=size) for s in sources]
    val_images = torch.cat([v[0] for v in val])
    val_labels = torch.cat([v[1] + int(o) for v, o in zip(val, offsets)])
    val_source = torch.cat([torch.full((len(v[1]),), i) for i, v in enumerate(val)])

    # Model: the classifier's backbone and the objective's head (one output per kind/class, or a
    # projection MLP).
    model = create_model(cfg.model)
    obj = cfg.objective
    contrastive = isinstance(obj, AlignUniform)
    f = model.num_features
    model.head = (nn.Sequential(nn.Linear(f, f), nn.ReLU(), nn.Linear(f, obj.feature_dim)) if contrastive
                  else nn.Linear(f, len(classes)))
    model.to(device)
    optimizer = build_optimizer(cfg, list(model.parameters()))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    bank = torch.arange(0, len(labels), max(1, len(labels) // KNN_BANK))[:KNN_BANK]  # k-NN references, every kind
    gen = torch.Generator().manual_seed(cfg.train.seed)
    parts = {"trained": model, "optimizer": optimizer}
    stage.begin(parts, None, gen)

    n, bs, epochs = len(labels), cfg.train.batch_size, cfg.train.epochs
    steps = math.ceil(n / bs)
    with StepProgress(enabled=progress) as bar:
        task = bar.add_task("pretrain", total=steps * epochs, completed=steps * stage.epoch)
        for epoch in range(stage.epoch, epochs):
            model.train()
            order, total = torch.randperm(n, generator=gen), 0.0
            for step in range(steps):
                idx = order[step * bs:(step + 1) * bs]
                x = images[idx]
                if cfg.train.augment == "flips":
                    x = apply_views(x, torch.randint(0, N_VIEWS, (len(idx),), generator=gen))
                if contrastive:
                    views = torch.cat([augment(to_float(x), gen, obj.crop_scale) for _ in range(2)]).to(device)
                    z = nn.functional.normalize(model(views), dim=1)
                    z1, z2 = z[:len(idx)], z[len(idx):]
                    loss = align_loss(z1, z2, obj.alpha) + obj.uniform_weight * (
                        uniform_loss(z1, obj.t) + uniform_loss(z2, obj.t)) / 2
                else:
                    loss = criterion(model(to_float(x).to(device)), labels[idx].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                bar.advance(task)
            if contrastive:
                guess = knn_predict(features(model, images[bank], device), labels[bank],
                                    features(model, val_images, device))
            else:
                guess = predict(model, val_images, device)
            correct = guess == val_labels
            per_kind = {s.kind: float(correct[val_source == i].float().mean()) for i, s in enumerate(sources)}
            row = {"epoch": epoch + 1, "loss": total / n, "val_accuracy": float(correct.float().mean()),
                   "val_accuracy_per_kind": per_kind}
            stage.end_epoch(row)
            bar.update(task, description=f"epoch {epoch + 1}/{epochs} loss={row['loss']:.3f} "
                                         f"val acc={row['val_accuracy']:.3f}")
            say(f"epoch {epoch + 1} loss {row['loss']:.4f} val_accuracy {row['val_accuracy']:.4f} "
                + " ".join(f"{k}={v:.3f}" for k, v in per_kind.items()))
            stage.checkpoint_if_due()

    # Outputs: the last epoch's weights (nothing private to select on), the public stage, metrics last.
    save_weights(model, run.weights)
    described = "; ".join(f"{s.kind}: images 0..{s.n - 1} of seed {s.seed} ({s.origin}), held-out "
                          f"{s.n}..{s.n + cfg.data.n_val - 1}" for s in sources)
    own = StageSpend(stage="pretrain", run=run.name, data=[f"procedural/{s.kind}" for s in sources],
                     guarantee="public",
                     note=f"{obj.name} pretraining on images of public random processes at {size} px ({described}; "
                          f"dpmammo {__version__}): no private data")
    privacy = write_privacy(run.privacy, own, [])
    last = stage.history[-1]
    metrics = {
        "objective": obj.name,
        "classes": classes,
        "val": {"accuracy": last["val_accuracy"], "accuracy_per_kind": last["val_accuracy_per_kind"],
                "epoch": stage.epoch, "n": len(val_labels)},
        "history": stage.history,
        "train_size": n, "n_private": 0,
        "sources": [{"kind": s.kind, "seed": s.seed, "n": s.n, "origin": s.origin} for s in sources],
    }
    return stage.finish(metrics, privacy, f"done: val accuracy {last['val_accuracy']:.4f}; {privacy.describe()}")


KNN_BANK, KNN_K = 4096, 20


def augment(x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float]) -> torch.Tensor:
    """A random view of each image of x (N, 1, S, S) in [0, 1]: resized crop (area fraction in
    `scale`, aspect 3/4–4/3), flips, gamma 0.6–1.6 and Gaussian noise up to 0.05. Brightness and
    contrast are left alone: cnn-small standardises each image, which undoes them."""
    n = len(x)
    u = lambda lo, hi: torch.rand(n, generator=gen) * (hi - lo) + lo  # noqa: E731
    area, ratio = u(*scale), torch.exp(u(math.log(3 / 4), math.log(4 / 3)))
    w, h = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
    flip = lambda: torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)  # noqa: E731
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = w * flip(), h * flip()
    theta[:, 0, 2], theta[:, 1, 2] = u(-1, 1) * (1 - w), u(-1, 1) * (1 - h)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    out = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    out = out.clamp(1e-4, 1.0) ** torch.exp(u(math.log(0.6), math.log(1.6)))[:, None, None, None]
    return out + u(0.0, 0.05)[:, None, None, None] * torch.randn(out.shape, generator=gen)


def align_loss(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """Wang & Isola (2020): mean ||x_i - y_i||^alpha over positive pairs (rows L2-normalised)."""
    return (x - y).norm(dim=1).pow(alpha).mean()


def uniform_loss(x: torch.Tensor, t: float) -> torch.Tensor:
    """Wang & Isola (2020): log of the mean of exp(-t ||x_i - x_j||²) over pairs i < j."""
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


@torch.no_grad()
def features(model: nn.Module, images: torch.Tensor, device, batch: int = 512) -> torch.Tensor:
    model.eval()
    out = [model.forward_features(to_float(images[i:i + batch]).to(device)).cpu() for i in range(0, len(images), batch)]
    return nn.functional.normalize(torch.cat(out), dim=1)


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, query: torch.Tensor, k: int = KNN_K) -> torch.Tensor:
    """Majority label of each query's k nearest bank features (cosine; features L2-normalised)."""
    nearest = (query @ bank.T).topk(min(k, len(bank)), dim=1).indices
    votes = torch.zeros(len(query), int(bank_labels.max()) + 1).scatter_add_(
        1, bank_labels[nearest], torch.ones(nearest.shape))
    return votes.argmax(1)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, device, batch: int = 512) -> torch.Tensor:
    model.eval()
    out = [model(to_float(images[i:i + batch]).to(device)).argmax(1).cpu() for i in range(0, len(images), batch)]
    return torch.cat(out)
