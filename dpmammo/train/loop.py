"""One training stage: fit a classifier on a set of patches, with DP-SGD or without.

Read it top to bottom: data → model (and the privacy chain of whatever weights it starts from)
→ (cached features) → batch selection → (privacy) → epochs of steps → selection → outputs.
With a frozen backbone the head trains on backbone features computed once per image and flip
view (dpmammo.train.features): the same procedure, without recomputing the backbone each step.
DP-SGD follows Abadi et al. (2016), "Deep Learning with Differential Privacy": Poisson-sampled
logical batches of units (patients by default), each unit's gradient clipped to
`max_grad_norm`, Gaussian noise from a secret generator, RDP/PRV accounting.

Released under DP: the weights of the selected epoch (selection uses the validation set), the
per-epoch validation AUROC and ε, and with `train.centre_features` the noisy centre of the head's
inputs (dpmammo.train.centre; folded into the head, and kept in the checkpoint for a resume).
Training losses are computed from private batches without noise, so they are not recorded for DP
runs (privacy.json's notes say so).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from dpmammo import __version__, distributed
from dpmammo.distributed import launch
from dpmammo.data.images import N_VIEWS, apply_views, load_images, load_labels, to_float
from dpmammo.data.sets import check_training_sets, load_set, resolve_root, synthetic_provenance
from dpmammo.errors import DpMammoError
from dpmammo.files import check_out
from dpmammo.models import save_weights
from dpmammo.models.config import flip_invariant
from dpmammo.privacy import (DPSetup, StageSpend, check_planned_total, dp_stage, make_private, non_dp_stage,
                             prior_history, weights_stage, write_privacy)
from dpmammo.privacy.ledger import synthetic_chain
from dpmammo.privacy.nonprivate import NonPrivate
from dpmammo.privacy.sampling import batch_selection, epoch_steps, secret_key
from dpmammo.randomness import keyed_uniform
from dpmammo.progress import StepProgress
from dpmammo.runs import METRICS, RunDir
from dpmammo.train import features as fc
from dpmammo.train.build import initial_model
from dpmammo.train.centre import centre_release, dp_feature_centre, exact_feature_centre, fold_into_head
from dpmammo.train.config import TrainConfig, input_paths
from dpmammo.train.ema import ParameterEMA
from dpmammo.train.members import apply_audit_split
from dpmammo.train.predict import predict_proba
from dpmammo.train.stage import Stage

DP_LOSS_NOTE = ("training losses are not recorded: they are computed from private batches without noise; "
                "the per-epoch validation AUROC and the selected epoch depend on the validation set and the "
                "DP iterates only")


def fit(cfg: TrainConfig, out: str | Path, *, force: bool = False, progress: bool = True, nproc: int = 1) -> dict:
    """Train one run into `out` and return its metrics. Resumes an interrupted run in `out`.

    nproc > 1: one training over that many processes on this machine (dpmammo.distributed); under
    torchrun every rank calls `fit` itself (nproc 1) inside torchrun's process group.

    Example:
        >>> fit(load_config(TrainConfig, "configs/cnn-small-dp.yaml"), "runs/cnn-eps6")  # doctest: +SKIP
    """
    check_out(out, input_paths(cfg))  # before anything is touched
    run = RunDir(out)
    check_data(cfg, run)  # before the run directory is touched: a refusal leaves it as it was
    if nproc > 1:
        launch(_fit_rank, (cfg, str(out), force, progress), nproc, cfg.train.device)
        return run.read_metrics()
    return _fit_rank(cfg, out, force, progress)


def _fit_rank(cfg: TrainConfig, out: str | Path, force: bool, progress: bool) -> dict:
    """`fit` on one rank (the only one, without a process group): rank 0 holds the run directory
    and writes; the other ranks train beside it and write nothing (dpmammo.train.stage)."""
    run, ranks = RunDir(out), distributed.current()
    with Stage.open(run, cfg, force, device=cfg.train.device, opening=f"{run.path} dpmammo {__version__}",
                    epochs=cfg.train.epochs, checkpoint_every_s=cfg.train.checkpoint_every_s, ranks=ranks) as stage:
        if ranks.distributed:
            stage.say(f"one training over {ranks.world} processes ({torch.distributed.get_backend()})")
        return train_run(cfg, stage, progress)


def check_data(cfg: TrainConfig, run: RunDir) -> None:
    """Refuse data that would make the run's result or guarantee wrong (a patch twice, test patients
    in training, validation patients in training: `check_training_sets`), and a resume whose data
    changed since the interruption (a file deleted, added or moved would silently change N and
    what the checkpointed epochs saw)."""
    root = resolve_root(cfg.data.root)
    train = apply_audit_split(check_training_sets(root, cfg.data.train, cfg.data.val), cfg.data.audit_split)
    if not (run.checkpoint.is_file() and run.has_config(cfg)):
        return
    before = run.read_training_state().get("data")
    if before is None:  # a checkpoint of an earlier version: it recorded no file list
        return
    for what, now in (("train", train), ("val", load_set(root, cfg.data.val))):
        was, files = set(before[what]), {r.path for r in now}
        for gone, word in ((sorted(was - files), "is gone"), (sorted(files - was), "is new")):
            if gone:
                raise DpMammoError(
                    f"cannot resume {run.path}: {gone[0]} {word} since the run was interrupted ({len(gone)} file(s) of "
                    f"data.{what} changed); restore the data as it was, or train into another --out")


def train_run(cfg: TrainConfig, stage: Stage, progress: bool) -> dict:
    """The body of `fit`: one stage in its run directory; `stage.say` writes a line to log.txt. On a
    rank other than 0 of a training over several processes it trains its share, writes nothing and
    returns {}."""
    run, say, device, ranks = stage.run, stage.say, stage.device, stage.ranks

    # Data: the union of the training sets, the validation set, all in memory as uint8.
    root = resolve_root(cfg.data.root)
    train_records = [r for name in cfg.data.train for r in load_set(root, name)]
    train_records = apply_audit_split(train_records, cfg.data.audit_split)  # audits: a known member split
    val_records = load_set(root, cfg.data.val)
    n_private = sum(r.source == "real" for r in train_records)

    # Model (seeded, from init_from's weights), and the privacy chain of everything that enters the
    # run: synthetic sets, weights.
    upstream = input_chain(cfg, train_records)  # first: it refuses a parent run that has not finished
    model = initial_model(cfg)
    ranks.share_module(model)  # every rank starts from rank 0's weights
    images = load_images(train_records, model.input_size)
    labels = load_labels(train_records)
    val_images = load_images(val_records, model.input_size)
    val_labels = load_labels(val_records).numpy()
    model.to(device)

    # Frozen backbone: its features per image and flip view, once (disk-cached); train the head on them.
    cached = model.is_backbone_frozen and cfg.train.feature_cache
    test_flips = cfg.train.test_flips  # validation scores images as evaluation will (test-time flips or not)
    inputs, trainable, score_val = images, model, lambda: predict_proba(model, val_images, flips=test_flips,
                                                                        device=device)
    if cached:
        n_views = N_VIEWS if cfg.train.augment == "flips" else 1
        if not ranks.is_main:
            ranks.barrier()  # rank 0 computes and stores the features; the others then read them
        inputs = fc.cached_features(model, train_records, images, n_views, device=device, say=say)
        val_feats = fc.cached_features(model, val_records, val_images, N_VIEWS if test_flips else 1, device=device,
                                       say=say)
        if ranks.is_main:
            ranks.barrier()
        trainable, score_val = model.head, lambda: fc.head_proba(model, val_feats, flips=test_flips, device=device)

    # Batch selection: Poisson-sampled units of privacy under DP (secret randomness), shuffled batches otherwise.
    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg, params)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    gen = torch.Generator().manual_seed(cfg.train.seed)  # non-private sampling
    epochs, batch_size = cfg.train.epochs, cfg.train.batch_size
    # Several processes: every rank draws with rank 0's secret key and keeps its share of each batch.
    key = None if cfg.privacy is None else ranks.share_key(
        secret_key(cfg.privacy, cfg.train.seed) if ranks.is_main else None)
    sampler = batch_selection(train_records, cfg.privacy, batch_size, gen, cfg.train.seed,
                              cfg.train.physical_batch_size, ", ".join(cfg.data.train),
                              released_rate_units=run.released_rate_units() if stage.resuming else None,
                              views_per_record=cfg.train.augment_multiplicity, key=key,
                              shard=(ranks.rank, ranks.world))
    # Centred head inputs: the centre is released once (under DP, a Gaussian release of the stage; a resume
    # reuses the one its checkpoint holds) and the head trains on features minus it (dpmammo.train.centre).
    centre, releases = None, []
    if cfg.train.centre_features is not None:
        c = cfg.train.centre_features
        if cfg.privacy is None:
            centre, how = exact_feature_centre(inputs), "exact, no DP"
        else:
            if stage.resuming:
                centre, release = resumed_centre(run), centre_release(c, cfg.privacy.unit)
            else:
                centre, release = dp_feature_centre(inputs, sampler, c, cfg.privacy.unit)
            releases, how = [release], f"a Gaussian release, sigma={c.noise_multiplier:g} clip={c.clip:g}"
        centre = ranks.share_tensor(centre)  # rank 0's on every rank (each computes it alike: one key, all units)
        inputs, val_feats = inputs - centre, val_feats - centre
        say(f"features centred on their training mean ({how})")  # no value of it: a log outlives a killed attempt

    # DP-SGD or not, the steps ask one object (DPSetup or its non-private counterpart) how to update.
    dp = NonPrivate(criterion, optimizer, ranks)
    if cfg.privacy is not None:
        p = cfg.privacy
        dp = make_private(model=trainable, optimizer=optimizer, sampler=sampler, epochs=epochs, config=p,
                          criterion=criterion, prior=prior_history(upstream, p), world_size=ranks.world,
                          releases=releases)
        trainable, optimizer = dp.model, dp.optimizer
        check_planned_total(upstream, dp_stage(stage="classifier", run=run.name, data=cfg.data.train, dp=dp,
                                               planned=True))
        say(f"DP-SGD ({dp.grad_sample_mode}, unit {p.unit}; q from a noisy unit count, sigma_N={p.unit_count_noise:g}): "
            f"sigma={dp.noise_multiplier:.4f} q={dp.sample_rate:.5f} steps={dp.planned_steps} "
            f"target eps={p.target_epsilon}{' (chain total)' if p.target == 'total' else ''} delta={p.delta:g}"
            + (" SEEDED NOISE (tests only): no guarantee" if p.seeded_noise_for_tests else ""))

    # What changes during training: the head alone when the backbone is frozen. Only that part is
    # copied at each new best epoch and checkpointed (a frozen Swin-T is 110 MB a copy).
    changing = model.head if model.is_backbone_frozen else model
    parts = {"trained": changing, "optimizer": optimizer}
    ema = None if cfg.train.ema_decay is None else ParameterEMA(changing, cfg.train.ema_decay)
    if ema is not None:
        parts["ema"] = ema
    state = stage.begin(parts, dp, gen, best=None, best_auroc=-1.0, best_epoch=None,
                        data={"train": [r.path for r in train_records], "val": [r.path for r in val_records]},
                        centre=centre.tolist() if centre is not None else None)

    steps_per_epoch = epoch_steps(sampler, epochs, dp.planned_steps)
    # Physical chunks bound the memory of a backbone pass. A head on cached features needs none (a
    # batch of features is a few hundred KB), and each extra chunk costs a forward/backward call.
    physical = len(labels) * cfg.train.augment_multiplicity if cached else cfg.train.physical_batch_size
    bar = StepProgress(enabled=progress and ranks.is_main)
    with bar:
        task = bar.add_task("train", total=sum(steps_per_epoch), completed=sum(steps_per_epoch[:stage.epoch]))
        for epoch in range(stage.epoch, epochs):
            trainable.train()
            losses = []
            for step in range(steps_per_epoch[epoch]):
                batch = sampler.next_batch().repeated(cfg.train.augment_multiplicity)  # K views of each record
                views = flip_views(cfg.train.seed, sum(steps_per_epoch[:epoch]) + step, batch.idx,
                                   cfg.train.augment_multiplicity) if cfg.train.augment == "flips" else None
                x = fc.take_views(inputs, batch.idx, views) if cached else image_batch(images, batch.idx, views)
                losses.append(train_step(trainable, dp, batch, x, labels[batch.idx], physical, device))
                if ema is not None:
                    ema.update(changing)
                if step + 1 < steps_per_epoch[epoch]:
                    dp.draw_next_noise()
                bar.advance(task)
            # A non-private run logs its training loss: the mean over every rank's rows. Under DP a loss
            # of private batches is not released (see DP_LOSS_NOTE).
            mean_loss = ranks.mean(sum(losses), len(losses)) if cfg.privacy is None else None
            if not ranks.is_main:
                continue  # validation, selection, logs and checkpoints are rank 0's
            val_auroc = float(roc_auc_score(val_labels, score_val()))
            eps = dp.running_epsilon()
            row = {"epoch": epoch + 1, "val_auroc": val_auroc, "epsilon": eps}
            candidate = (val_auroc, "weights", lambda: copy.deepcopy(changing.state_dict()))
            if ema is not None:  # the average of the iterates: post-processing, scored beside them
                with ema.applied(changing):
                    row["val_auroc_ema"] = float(roc_auc_score(val_labels, score_val()))
                if cfg.train.select == "last" or row["val_auroc_ema"] >= val_auroc:
                    candidate = (row["val_auroc_ema"], "average", lambda: ema.averaged_state(changing))
            if mean_loss is not None:
                row["loss"] = mean_loss
            if cfg.train.select == "last" or candidate[0] > state["best_auroc"]:
                state.update(best=candidate[2](), best_auroc=candidate[0], best_epoch=epoch + 1, best_kind=candidate[1])
            stage.end_epoch(row)
            shown = (f"ε={eps:.2f}/{cfg.privacy.unit} (this stage)" if eps is not None else
                     f"loss={row['loss']:.3f}" if "loss" in row else "")
            bar.update(task, description=f"epoch {epoch + 1}/{epochs} val AUROC={val_auroc:.3f} {shown}")
            say(f"epoch {epoch + 1} val_auroc {val_auroc:.4f} " + (f"eps {eps:.3f}/{cfg.privacy.unit} (this stage)" if eps is not None else "")
                + (f"loss {row['loss']:.4f}" if "loss" in row else ""))
            stage.checkpoint_if_due()  # by time, not every epoch: many long runs make a study

    if not ranks.is_main:
        return {}
    # Outputs: selected weights, privacy record, metrics (written last: it marks the run finished;
    # the checkpoint is deleted then).
    changing.load_state_dict(state["best"])
    if centre is not None:
        fold_into_head(model.head, centre)  # the released head scores raw features
    save_weights(model, run.weights)
    if cfg.privacy is not None:
        own = dp_stage(stage="classifier", run=run.name, data=cfg.data.train, dp=dp)
        notes = [DP_LOSS_NOTE, selection_note(cfg)]  # what is not released, and what is not accounted
    else:
        own, notes = non_dp_stage(stage="classifier", run=run.name, data=cfg.data.train, n_private=n_private), []
    privacy = write_privacy(run.privacy, own, upstream, notes=notes)
    metrics = {
        "val": {"set": cfg.data.val, "auroc": state["best_auroc"], "epoch": state["best_epoch"], "n": len(val_records),
                "weights": state.get("best_kind", "weights")},
        "selection": (f"{cfg.train.select} on {cfg.data.val}; the validation set is used without DP accounting "
                      "(selection leaks a little about it, nothing about the training set beyond the stated ε)"),
        "history": stage.history,
        "train_size": len(train_records), "n_private": n_private,
    }
    return stage.finish(metrics, privacy,
                        f"done: val auroc {state['best_auroc']:.4f} (epoch {state['best_epoch']}); {privacy.describe()}")


def resumed_centre(run: RunDir) -> torch.Tensor:
    """The centre an interrupted DP stage released before its checkpoint: a resume never releases it
    again (its fresh secret key would draw other noise: a second release)."""
    saved = run.read_training_state().get("centre")
    if saved is None:
        raise DpMammoError(f"cannot resume {run.path}: its checkpoint holds no feature centre (written before "
                           "train.centre_features was set?); train into another --out")
    return torch.tensor(saved, dtype=torch.float32)


def selection_note(cfg: TrainConfig) -> str:
    """What privacy.json says about the validation set: used, not accounted."""
    use = "selects the released epoch and is logged per epoch" if cfg.train.select == "best-val-auroc" else \
        "is logged per epoch (the last epoch is released)"
    return (f"model selection is not DP-accounted: the validation set {cfg.data.val} {use}, so what is released may "
            "reveal a little about validation patients; they are checked to be patient-disjoint from the training "
            "sets, and the stated ε covers the training patients only")


def input_chain(cfg: TrainConfig, train_records) -> list[StageSpend]:
    """The privacy chain of everything that enters the run besides its own training: a parent run
    (`init_from`), weight files, public pretrained weights, synthetic training folders."""
    chain: list[StageSpend] = []
    public = {Path(p).expanduser().resolve() for p in cfg.public_weights}
    if cfg.init_from is not None:
        parent = RunDir(cfg.init_from)
        if not parent.is_finished:
            raise DpMammoError(f"init_from: {parent.path} is not a finished run (no {METRICS})")
        chain += parent.read_privacy().stages
    for field in ("weights", "backbone_weights"):
        path = getattr(cfg.model, field, None)
        if path is None:
            continue
        path = Path(path).expanduser().resolve()
        origin = RunDir(path.parent)
        if origin.is_finished and origin.privacy.is_file() and origin.weights == path:
            chain += origin.read_privacy().stages  # weights of a finished run carry its chain
        else:
            chain.append(weights_stage(path, declared_public=path in public))
    if getattr(cfg.model, "pretrained", False):
        chain.append(StageSpend(stage="weights", run="timm ImageNet-1k", data=["ImageNet-1k"], guarantee="public",
                                note="ImageNet weights from timm: public data"))
    pca = getattr(cfg.model, "public_pca", None)
    # The projection is part of the released model: its provenance is on record. A parent run or a
    # weight file brings its own projection (loaded over the fitted one) and its own chain says where
    # it came from.
    if pca is not None and getattr(cfg.model, "weights", None) is None and cfg.init_from is None:
        px = cfg.model.with_pixels
        pixels = ("" if px is None else f", and the patch's {px.resolution}×{px.resolution} standardised pixels on "
                  f"{px.components} of their own, fitted on the same images")
        symmetrised = " averaged over the patch's 8 flips and transposes" if flip_invariant(cfg.model) else ""
        chain.append(StageSpend(
            stage="public-basis", run=f"{pca.components} principal components, seed {pca.seed}",
            data=[f"procedural/{k}" for k in pca.kinds], guarantee="public",
            note=f"ScatterNet features{symmetrised} projected on principal components fitted on images "
                 f"0..{pca.images_per_kind - 1} "
                 f"of each procedural process ({', '.join(pca.kinds)}; seed {pca.seed}, {cfg.model.input_size} px)"
                 f"{pixels}: made by a program from its seed; no private data"))
    return chain + synthetic_chain(synthetic_provenance(train_records))


def flip_views(seed: int, step: int, idx: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The flip view of each row of a step: a function of (seed, step, record) alone, so the
    views never depend on which other records the (secret) sampling put into the step.

    With k > 1, `idx` holds each record k times in a row (`Batch.repeated`) and its k rows get k
    distinct views: the first k of a random permutation of the N_VIEWS flips."""
    if k == 1:
        return (keyed_uniform(seed, "views", step, idx)[:, 0] * N_VIEWS).long().clamp_(max=N_VIEWS - 1)
    records = idx[::k]
    order = torch.argsort(keyed_uniform(seed, "views-k", step, records, N_VIEWS), dim=1)
    return order[:, :k].reshape(-1)


def build_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if not params:
        raise DpMammoError("the model has no trainable parameters (is everything frozen?)")
    o = cfg.optim
    # torch's fused kernels (one pass over all tensors) on CPU and CUDA: a small head's update is
    # otherwise dominated by per-tensor overhead, paid at every step of every run.
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=0.9 if o.momentum is None else o.momentum,
                               weight_decay=o.weight_decay, fused=fused)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, fused=fused)


def image_batch(images: torch.Tensor, idx: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
    """Float inputs of batch `idx`, each image flipped to its drawn view."""
    x = images[idx]
    return to_float(apply_views(x, views) if views is not None else x)


def train_step(trainable, dp: DPSetup | NonPrivate, batch, x_all, y_all, physical: int, device) -> float:
    """One logical step over inputs x_all (images or cached features), split into physical chunks of
    at most `physical` records (virtual batches) that never split a unit of privacy. `dp` says how
    chunks become an update: DPSetup clips each unit and noises the sum (the same code for every
    clipping mode), NonPrivate accumulates each chunk's mean weighed by its share of the step. On
    one rank of several, `batch` is this rank's share, and both sum the shares over the ranks."""
    n = len(y_all)
    if n == 0:  # an empty logical batch (under DP still a noisy step), or this rank's empty share of one
        dp.step_empty()
        return 0.0
    total = 0.0
    for part, last in dp.chunks(batch, physical):
        x, y = x_all[part].to(device), y_all[part].to(device)
        loss = dp.criterion(trainable(x), y)
        total += loss.item() * len(y)
        dp.update(dp.weigh(loss, len(y), batch.rows_in_step), last)
    return total / n
