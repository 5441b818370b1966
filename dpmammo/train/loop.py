"""One training stage: fit a classifier on a set of patches, with DP-SGD or without.

Read it top to bottom: data → model → (cached features) → (privacy) → epochs of steps → selection
→ outputs. With a frozen backbone the head trains on backbone features computed once per image and
flip view (dpmammo.train.features): the same procedure, without recomputing the backbone each step.
DP-SGD follows Abadi et al. (2016), "Deep Learning with Differential Privacy": Poisson-sampled
logical batches, per-sample clipping to `max_grad_norm`, Gaussian noise, RDP/PRV accounting.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from dpmammo import __version__
from dpmammo.data.images import N_VIEWS, apply_views, load_images, load_labels, to_float
from dpmammo.data.sets import load_set, resolve_root, synthetic_provenance
from dpmammo.errors import DpMammoError
from dpmammo.models import create_model, load_weights, save_weights
from dpmammo.privacy import StageSpend, check_delta, make_private, read_chain, stage_spend, write_privacy_json
from dpmammo.train import features as fc
from dpmammo.train import run_dir as rd
from dpmammo.train.config import TrainConfig
from dpmammo.train.predict import predict_proba, resolve_device
from dpmammo.train.schedule import epoch_steps, make_progress, plain_chunks


def fit(cfg: TrainConfig, out: str | Path, *, force: bool = False, progress: bool = True) -> dict:
    """Train one run into `out` and return its metrics. Resumes an interrupted run in `out`."""
    t0 = time.time()
    run_dir, resuming = rd.prepare(out, cfg, force)
    log = open(run_dir / rd.LOG, "a")
    say = lambda msg: (log.write(msg + "\n"), log.flush())  # noqa: E731
    say(f"{'resume' if resuming else 'start'} {run_dir} dpmammo {__version__}")
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)

    # Data: the union of the training sets, the validation set, all in memory as uint8.
    root = resolve_root(cfg.data.root)
    train_records = [r for name in cfg.data.train for r in load_set(root, name)]
    val_records = load_set(root, cfg.data.val)
    n_private = sum(r.source == "real" for r in train_records)

    # Model, optionally starting from a finished run (strict load; its privacy chain carries on).
    model = create_model(cfg.model)
    upstream = [provenance_stage(p) for p in synthetic_provenance(train_records)]
    upstream = [s for stages in upstream for s in stages]
    if cfg.init_from is not None:
        parent = Path(cfg.init_from)
        if not rd.is_finished(parent):
            raise DpMammoError(f"init_from: {parent} is not a finished run (no {rd.METRICS})")
        load_weights(model, parent / rd.WEIGHTS)
        upstream = read_chain(parent / rd.PRIVACY) + upstream
        if cfg.model.freeze_backbone:
            model.freeze_backbone()  # re-freeze: loading does not touch requires_grad, but be explicit
    images = load_images(train_records, model.input_size)
    labels = load_labels(train_records)
    val_images = load_images(val_records, model.input_size)
    val_labels = load_labels(val_records).numpy()
    model.to(device)

    # Frozen backbone: its features per image and flip view, once (disk-cached); train the head on them.
    cached = model.is_backbone_frozen and cfg.train.feature_cache
    inputs, trainable, score_val = images, model, lambda: predict_proba(model, val_images, device=device)
    if cached:
        n_views = N_VIEWS if cfg.train.augment == "flips" else 1
        inputs = fc.cached_features(model, train_records, images, n_views, device=device, say=say)
        val_feats = fc.cached_features(model, val_records, val_images, 1, device=device, say=say)
        trainable, score_val = model.head, lambda: fc.head_proba(model, val_feats, device=device)

    # Optimiser, then DP-SGD around it.
    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg, params)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    dp = None
    epochs, batch_size = cfg.train.epochs, cfg.train.batch_size
    if cfg.privacy is not None:
        if n_private:
            check_delta(cfg.privacy.delta, n_private)
        dp = make_private(model=trainable, optimizer=optimizer, dataset_size=len(images), batch_size=batch_size,
                          epochs=epochs, config=cfg.privacy, criterion=criterion)
        trainable, optimizer, criterion = dp.model, dp.optimizer, dp.criterion
        say(f"DP-SGD ({dp.grad_sample_mode}): sigma={dp.noise_multiplier:.4f} q={dp.sample_rate:.5f} steps={dp.planned_steps} "
            f"target eps={cfg.privacy.target_epsilon} delta={cfg.privacy.delta:g}")
    gen = torch.Generator().manual_seed(cfg.train.seed)

    state = {"epoch": 0, "history": [], "best": None, "best_auroc": -1.0, "best_epoch": None, "wall_s": 0.0}
    if resuming:
        state = load_checkpoint(run_dir, model, optimizer, dp, gen)
        t0 = time.time()  # time before the interruption is in state["wall_s"]
        say(f"resumed after epoch {state['epoch']}")

    steps_per_epoch = epoch_steps(len(images), batch_size, epochs, dp)
    bar = make_progress(progress)
    with bar:
        task = bar.add_task("train", total=sum(steps_per_epoch), completed=sum(steps_per_epoch[:state["epoch"]]))
        for epoch in range(state["epoch"], epochs):
            trainable.train()
            losses = []
            for _ in range(steps_per_epoch[epoch]):
                idx = dp.sample_batch(gen) if dp else None
                if dp is None:
                    idx = next_batch(gen, len(images), batch_size, state, epoch)
                views = torch.randint(0, N_VIEWS, (len(idx),), generator=gen) if cfg.train.augment == "flips" else None
                x = fc.take_views(inputs, idx, views) if cached else image_batch(images, idx, views)
                losses.append(train_step(trainable, optimizer, criterion, dp, x, labels[idx], cfg, device))
                bar.advance(task)
            val_auroc = float(roc_auc_score(val_labels, score_val()))
            eps = dp.epsilon() if dp else None
            loss = sum(losses) / max(1, len(losses))
            state["history"].append({"epoch": epoch + 1, "loss": loss, "val_auroc": val_auroc, "epsilon": eps})
            if cfg.train.select == "last" or val_auroc > state["best_auroc"]:
                state.update(best=copy.deepcopy(model.state_dict()), best_auroc=val_auroc, best_epoch=epoch + 1)
            state["epoch"] = epoch + 1
            state["wall_s"] += time.time() - t0
            t0 = time.time()
            eps_txt = f" ε={eps:.2f}" if eps is not None else ""
            bar.update(task, description=f"epoch {epoch + 1}/{epochs} loss={loss:.3f} val AUROC={val_auroc:.3f}{eps_txt}")
            say(f"epoch {epoch + 1} loss {loss:.4f} val_auroc {val_auroc:.4f}" + (f" eps {eps:.3f}" if dp else ""))
            save_checkpoint(run_dir, model, optimizer, dp, gen, state)

    # Outputs: selected weights, privacy record, metrics (written last: it marks the run finished).
    model.load_state_dict(state["best"])
    save_weights(model, run_dir / rd.WEIGHTS)
    own = stage_spend(stage="classifier", run=run_dir.name, data=cfg.data.train, dp=dp,
                      dataset_size=len(images), n_private=n_private)
    privacy = write_privacy_json(run_dir / rd.PRIVACY, own, upstream)
    metrics = {
        "val": {"set": cfg.data.val, "auroc": state["best_auroc"], "epoch": state["best_epoch"], "n": len(val_records)},
        "selection": (f"{cfg.train.select} on {cfg.data.val}; the validation set is used without DP accounting "
                      "(selection leaks a little about it, nothing about the training set beyond the stated ε)"),
        "history": state["history"],
        "train_size": len(train_records), "n_private": n_private,
        "epsilon": privacy["epsilon"], "privacy_total": privacy["total"],
        "wall_time_s": state["wall_s"] + (time.time() - t0),
        "device": str(device), "dpmammo_version": __version__,
    }
    rd.finish(run_dir, metrics)
    say(f"done: val auroc {state['best_auroc']:.4f} (epoch {state['best_epoch']})")
    log.close()
    return metrics


def build_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if not params:
        raise DpMammoError("the model has no trainable parameters (is everything frozen?)")
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=0.9 if o.momentum is None else o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)


def next_batch(gen: torch.Generator, n: int, batch_size: int, state: dict, epoch: int) -> torch.Tensor:
    """Non-private sampling: a fresh permutation each epoch, consumed in fixed-size batches."""
    if state.get("perm_epoch") != epoch:
        state["perm"], state["perm_epoch"], state["perm_pos"] = torch.randperm(n, generator=gen), epoch, 0
    pos = state["perm_pos"]
    state["perm_pos"] = pos + batch_size
    return state["perm"][pos:pos + batch_size]


def image_batch(images: torch.Tensor, idx: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
    """Float inputs of batch `idx`, each image flipped to its drawn view."""
    x = images[idx]
    return to_float(apply_views(x, views) if views is not None else x)


def train_step(trainable, optimizer, criterion, dp, x_all, y_all, cfg: TrainConfig, device) -> float:
    """One logical step over inputs x_all (images or cached features), split into physical chunks
    (virtual batches). Under DP, `criterion` is DPSetup.criterion: the same code for every mode."""
    n, physical = len(y_all), cfg.train.physical_batch_size
    if dp is not None and n == 0:
        dp.step_empty()
        return 0.0
    chunks = dp.physical_chunks(n, physical) if dp else plain_chunks(n, physical)
    total = 0.0
    for part, last in chunks:
        x, y = x_all[part].to(device), y_all[part].to(device)
        loss = criterion(trainable(x), y)
        total += loss.item() * len(y)
        if dp is None:
            (loss * len(y) / n).backward()  # plain accumulation is exact when nothing is clipped
            if last:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        else:
            loss.backward()
            optimizer.step()  # on non-last chunks: clip and accumulate only (signal_skip_step)
            optimizer.zero_grad(set_to_none=True)
    return total / n


def provenance_stage(prov: dict) -> list[StageSpend]:
    """The privacy chain a synthetic folder carries (see dpmammo.gan sample)."""
    if prov.get("chain"):
        return [StageSpend.model_validate(s) for s in prov["chain"]]
    return [StageSpend(stage="generator", run=Path(prov["folder"]).name, data=["unknown"], guarantee="none",
                       note="synthetic folder without provenance.json: its generator's training is unaccounted "
                            "(the shipped c-dcgan set came from a GAN trained on CBIS-DDSM without DP)")]


def save_checkpoint(run_dir: Path, model, optimizer, dp, gen: torch.Generator, state: dict) -> None:
    rd.save_training_state(run_dir, {"model": model, "optimizer": optimizer}, dp, gen,
                           {k: v for k, v in state.items() if k != "perm"})


def load_checkpoint(run_dir: Path, model, optimizer, dp, gen: torch.Generator) -> dict:
    return rd.load_training_state(run_dir, {"model": model, "optimizer": optimizer}, dp, gen)
