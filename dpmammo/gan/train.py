"""Train the conditional GAN on real patches, optionally with a DP discriminator. Entry: `train_gan`.

Read it top to bottom: data → models → (privacy) → epochs of (D step, G step) → outputs.

DP (Xie et al., 2018, "Differentially Private GAN"; Opacus's DCGAN example): only the
discriminator sees real data, so only its update is DP-SGD (Abadi et al., 2016): a Poisson
sample of real units (patients by default, rate q = batch_size / N, as the accountant assumes;
a sampled patient brings all of its patches) plus a fixed number (batch_size) of generated
patches form one logical batch; every unit's summed gradient (a patient's real rows; each fake
row alone) is clipped to C, the sum is noised and divided by batch_size. The number of fake
rows does not depend on the data, so adding or removing one patient changes the sum by at most
C: the sensitivity the noise is calibrated for. The generator learns only through the released
discriminator, which is post-processing and spends no budget; so its loss may be logged, the
discriminator's loss (computed on private rows without noise) is not.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.utils import save_image

from dpmammo import __version__
from dpmammo.data.images import load_images
from dpmammo.files import atomic_path
from dpmammo.data.sets import generator_training_records, resolve_root, synthetic_provenance, training_data_record
from dpmammo.gan.augment import U_FLIPS, diff_augment, flip_real, uniforms_needed
from dpmammo.gan.config import GanConfig, GeneratorShape
from dpmammo.gan.models import N_CLASSES, build, to_model_range
from dpmammo.models import save_weights
from dpmammo.privacy import (Batch, DPSetup, check_planned_total, dp_stage, make_private, non_dp_stage,
                             prior_history, synthetic_chain, write_privacy)
from dpmammo.privacy.nonprivate import NonPrivate
from dpmammo.privacy.sampling import batch_selection, epoch_steps
from dpmammo.randomness import keyed_uniform, step_generator
from dpmammo.progress import StepProgress
from dpmammo.runs import RunDir
from dpmammo.train.stage import Stage

DP_LOSS_NOTE = ("the discriminator's loss is not recorded: it is computed from private rows without noise; "
                "the generator's loss is post-processing of the released discriminator")

SAMPLES_DIR = "samples"
GRID_COLUMNS = 8


def train_gan(cfg: GanConfig, out: str | Path, *, force: bool = False, progress: bool = True) -> dict:
    """Train one generator run into `out` and return its metrics. Resumes an interrupted run in `out`.

    Writes config.yaml, model.safetensors (the generator), privacy.json, metrics.json (last: it
    marks the run finished), log.txt, and samples/epoch_XXX.png (a row per class) every
    `train.sample_every` epochs.
    """
    run = RunDir(out)
    with Stage.open(run, cfg, force, device=cfg.train.device, opening=f"{run.path} dpmammo {__version__} (gan)",
                    epochs=cfg.train.epochs) as stage:  # a checkpoint after every epoch
        return train_gan_run(cfg, stage, progress)


def train_gan_run(cfg: GanConfig, stage: Stage, progress: bool) -> dict:
    """The body of `train_gan`: one stage in its run directory; `stage.say` writes a line to log.txt."""
    run, say, device = stage.run, stage.say, stage.device

    # Data: real patches (all private) as uint8 in memory, scaled to [-1, 1] per batch.
    root = resolve_root(cfg.data.root)
    records = generator_training_records(root, cfg.data.train)
    images = load_images(records, cfg.model.image_size)
    labels = torch.tensor([r.label for r in records], dtype=torch.long)
    n_private = sum(r.source == "real" for r in records)
    n, batch_size = len(records), cfg.train.batch_size
    upstream = synthetic_chain(synthetic_provenance(records))  # the chains of synthetic inputs come along

    # Models and optimisers; DP wraps the discriminator only, fed by Poisson-sampled units.
    gen_model, disc = build(cfg.model, cfg.train.seed)
    gen_model.to(device), disc.to(device)
    o = cfg.optim
    opt_g = torch.optim.Adam(gen_model.parameters(), lr=o.lr_g, betas=(o.beta1, o.beta2))
    opt_d = torch.optim.Adam(disc.parameters(), lr=o.lr_d, betas=(o.beta1, o.beta2))
    rng = torch.Generator().manual_seed(cfg.train.seed)  # non-private sampling
    sampler = batch_selection(records, cfg.privacy, batch_size, rng, cfg.train.seed,
                              cfg.train.physical_batch_size, ", ".join(cfg.data.train),
                              released_rate_units=run.released_rate_units() if stage.resuming else None)
    # DP-SGD or not, the discriminator's steps ask one object (DPSetup or its non-private counterpart).
    d_train, dp = disc, NonPrivate(nn.BCEWithLogitsLoss(), opt_d)
    if cfg.privacy is not None:
        p = cfg.privacy
        dp = make_private(model=disc, optimizer=opt_d, sampler=sampler, epochs=cfg.train.epochs, config=p,
                          criterion=nn.BCEWithLogitsLoss(), prior=prior_history(upstream, p))
        d_train, opt_d = dp.model, dp.optimizer
        check_planned_total(upstream, dp_stage(stage="gan", run=run.name, data=cfg.data.train, dp=dp, planned=True))
        say(f"DP discriminator (unit {p.unit}; q from a noisy unit count): sigma={dp.noise_multiplier:.4f} "
            f"q={dp.sample_rate:.5f} steps={dp.planned_steps} target eps={p.target_epsilon} delta={p.delta:g}"
            + (" SEEDED NOISE (tests only): no guarantee" if p.seeded_noise_for_tests else ""))
    fixed_z, fixed_y = grid_inputs(cfg.model, cfg.train.seed)
    # The generator that is saved and sampled: an exponential moving average of the trained one
    # (smoother, better samples for small-data GANs; post-processing of G, so free under DP), or G.
    ema = None if cfg.train.ema_decay is None else AveragedModel(
        gen_model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay), use_buffers=True)
    released = gen_model if ema is None else ema.module

    parts = {"generator": gen_model, "discriminator": disc, "opt_g": opt_g, "opt_d": opt_d}
    if ema is not None:
        parts["generator_ema"] = ema
    stage.begin(parts, dp, rng)

    steps = epoch_steps(sampler, cfg.train.epochs, dp.planned_steps)
    bar = StepProgress(enabled=progress)
    with bar:
        task = bar.add_task("gan", total=sum(steps), completed=sum(steps[:stage.epoch]))
        for epoch in range(stage.epoch, cfg.train.epochs):
            gen_model.train(), d_train.train()
            sums = {"loss_d": 0.0, "loss_g": 0.0}
            for step in range(steps[epoch]):
                batch = sampler.next_batch()
                t = sum(steps[:epoch]) + step  # public randomness is addressed by step (dpmammo.randomness)
                sums["loss_d"] += d_step(d_train, dp, gen_model, images, labels, batch, cfg, t, device)
                sums["loss_g"] += g_step(d_train, opt_g, gen_model, dp, cfg, t, device)
                if ema is not None:
                    ema.update_parameters(gen_model)
                bar.advance(task)
            eps = dp.running_epsilon()
            if cfg.privacy is not None:  # the discriminator's loss on private rows is not released (DP_LOSS_NOTE)
                del sums["loss_d"]
            row = {"epoch": epoch + 1, **{k: v / max(1, steps[epoch]) for k, v in sums.items()}, "epsilon": eps}
            stage.end_epoch(row)
            eps_txt = f" ε={eps:.2f}/{cfg.privacy.unit} (this stage)" if eps is not None else ""
            d_txt = f" D={row['loss_d']:.3f}" if "loss_d" in row else ""
            bar.update(task, description=f"epoch {epoch + 1}/{cfg.train.epochs}{d_txt} G={row['loss_g']:.3f}{eps_txt}")
            say(f"epoch {epoch + 1}" + (f" loss_d {row['loss_d']:.4f}" if "loss_d" in row else "") + f" loss_g {row['loss_g']:.4f}"
                + (f" eps {eps:.3f}/{cfg.privacy.unit} (this stage)" if eps is not None else ""))
            every = cfg.train.sample_every
            if every and ((epoch + 1) % every == 0 or epoch + 1 == cfg.train.epochs):
                write_grid(released, fixed_z, fixed_y, run.path / SAMPLES_DIR / f"epoch_{epoch + 1:03d}.png", device)
            stage.checkpoint_if_due()

    # Outputs: generator weights, privacy record, metrics (written last: it marks the run finished).
    save_weights(released, run.weights)
    if cfg.privacy is not None:
        own = dp_stage(stage="gan", run=run.name, data=cfg.data.train, dp=dp,
                       note="DP discriminator; the generator is post-processing")
        notes = [DP_LOSS_NOTE]
    else:
        own, notes = non_dp_stage(stage="gan", run=run.name, data=cfg.data.train, n_private=n_private), []
    privacy = write_privacy(run.privacy, own, upstream, notes=notes)
    metrics = {"history": stage.history, "train_size": n, "n_private": n_private,
               "training_data": training_data_record(records, root)}
    return stage.finish(metrics, privacy, f"done after {stage.epoch} epochs")


def random_inputs(count: int, cfg: GanConfig, rng: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent vectors and uniformly drawn labels: data-independent, so free under DP (`rng` is a
    step's own generator, dpmammo.randomness.step_generator)."""
    z = torch.randn(count, cfg.model.latent_dim, generator=rng)
    y = torch.randint(0, N_CLASSES, (count,), generator=rng)
    return z.to(device), y.to(device)


def d_step(d_train, dp: DPSetup | NonPrivate, gen_model, images, labels, batch: Batch, cfg: GanConfig, t: int,
           device) -> float:
    """One discriminator update on the real rows of `batch` (target 1) plus batch_size fake rows (target 0).

    Loss = (sum of per-row BCE) / batch_size, so the non-DP and the DP update (clipped sum of
    units, noise, divided by the expected batch) have the same scale. Each fake row is its own
    unit: the rows of one real patient are contiguous and come first.
    """
    b, seed = cfg.train.batch_size, cfg.train.seed
    idx = batch.idx
    z, y_fake = random_inputs(b, cfg, step_generator(seed, "d-latents", t), device)
    with torch.no_grad():
        fake = gen_model(z, y_fake)
    real = to_model_range(images[idx])
    if cfg.train.flips:
        real = flip_real(real, keyed_uniform(seed, "d-flips", t, idx, U_FLIPS))
    # Rows are keyed by record (real) and by slot after the last record (fake).
    keys = torch.cat([idx, len(images) + torch.arange(b)])
    x_all = augment(torch.cat([real.to(device), fake]), cfg, seed, "d-augment", t, keys)
    y_all = torch.cat([labels[idx].to(device), y_fake])
    target = torch.cat([torch.full((len(idx),), 1.0 - cfg.train.label_smoothing), torch.zeros(b)]).to(device)
    total_rows = len(x_all)
    if batch.groups is None:
        rows = Batch(torch.arange(total_rows))
    else:
        first_fake = int(batch.groups.max()) + 1 if len(batch.groups) else 0
        rows = Batch(torch.arange(total_rows), torch.cat([batch.groups, first_fake + torch.arange(b)]))
    dp.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for part, last in dp.chunks(rows, cfg.train.physical_batch_size):
        logits = d_train(x_all[part], y_all[part])
        loss = dp.criterion(logits, target[part])  # under DP: whatever the clipping mode needs
        total += loss.item() * len(logits)
        # Under DP Opacus rescales the mean to per-row gradients and the optimizer divides by b.
        loss = dp.weigh(loss, len(logits), b)
        if cfg.model.d_classifier:  # non-private only (GanConfig refuses it under DP)
            loss = loss + cfg.train.classifier_weight * d_classifier_loss(d_train, x_all, y_all, part, len(idx), b)
        dp.update(loss, last)
    return total / b


def d_classifier_loss(d_train, x_all, y_all, part: slice, n_real: int, n_fake: int) -> torch.Tensor:
    """The auxiliary classifiers' share of one chunk of the discriminator's loss (non-private only).

    AC-GAN: the classifier learns the real rows' classes (mean over the real rows of the batch).
    TAC-GAN: the twin also learns the generated rows' classes (mean over the fake rows), so that
    the generator can be kept from exaggerating the classes (see `g_step`). Real rows come first.
    """
    twin_on = d_train.twin is not None
    rows = slice(part.start, part.stop if twin_on else min(part.stop, n_real))
    if rows.stop <= rows.start:
        return torch.zeros(())
    cls, twin = d_train.classify(x_all[rows])
    split = max(0, min(n_real, rows.stop) - rows.start)  # real rows of this chunk: the first `split`
    loss = F.cross_entropy(cls[:split], y_all[rows][:split], reduction="sum") / n_real if split else 0.0
    if twin_on and split < len(cls):
        loss = loss + F.cross_entropy(twin[split:], y_all[rows][split:], reduction="sum") / n_fake
    return loss


def g_step(d_train, opt_g, gen_model, dp: DPSetup | NonPrivate, cfg: GanConfig, t: int, device) -> float:
    """Non-saturating generator loss through the (released) discriminator; touches no real data."""
    b, seed = cfg.train.batch_size, cfg.train.seed
    z, y = random_inputs(b, cfg, step_generator(seed, "g-latents", t), device)
    with dp.hooks_off():  # no per-sample gradients for D here: they would leak into its next step
        fake = augment(gen_model(z, y), cfg, seed, "g-augment", t, torch.arange(b))
        logits = d_train(fake, y)
        loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        if cfg.model.d_classifier:  # AC-GAN: patches that D's classifier assigns to their label ...
            cls, twin = d_train.classify(fake)
            term = F.cross_entropy(cls, y)
            if twin is not None:  # ... TAC-GAN: but no easier to classify than the real ones
                term = term - F.cross_entropy(twin, y)
            loss = loss + cfg.train.classifier_weight * term
        opt_g.zero_grad(set_to_none=True)
        loss.backward(inputs=list(gen_model.parameters()))
        opt_g.step()
    return loss.item()


def augment(x: torch.Tensor, cfg: GanConfig, seed: int, stream: str, t: int, keys: torch.Tensor) -> torch.Tensor:
    """DiffAugment of what the discriminator sees (both players' steps), when configured; row i's
    transforms depend only on (seed, stream, step t, keys[i])."""
    policy = cfg.train.diffaugment
    if not policy:
        return x
    return diff_augment(x, policy, keyed_uniform(seed, stream, t, keys, uniforms_needed(policy)))


def grid_inputs(shape: GeneratorShape, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed latents for the progress grids: row c holds class c (0 benign, 1 malignant)."""
    g = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(N_CLASSES * GRID_COLUMNS, shape.latent_dim, generator=g)
    y = torch.arange(N_CLASSES).repeat_interleave(GRID_COLUMNS)
    return z, y


@torch.no_grad()
def write_grid(gen_model, z, y, path: Path, device) -> None:
    was = gen_model.training
    gen_model.eval()
    x = gen_model.render(z.to(device), y.to(device)).cpu()
    gen_model.train(was)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # a full disk or a kill leaves the previous grid or none, never half of one
        save_image(x.add(1).div(2).clamp(0, 1), tmp, nrow=GRID_COLUMNS, padding=2, format="png")
