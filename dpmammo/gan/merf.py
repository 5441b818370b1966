"""DP-MERF: train the conditional generator on one DP release of the data's mean embedding. Entry: `train_merf`.

Harder, Adamczewski & Park (AISTATS 2021), "DP-MERF: Differentially Private Mean Embeddings with
Random Features"; reference code github.com/ParkLabML/DP-MERF. Read it top to bottom: data → one
private release → generator steps that match it → outputs.

The mechanism, exactly:
- Features: images (pixels in [0, 1]) are average-pooled to `features.resolution` and flattened
  (d = resolution²); φ(x) = [cos(Wx), sin(Wx)] / √(D/2) with D = features.n_features and the
  D/2 rows of W drawn from N(0, I/ℓ²), ℓ = length_scale·resolution. So ‖φ(x)‖ = 1 and
  φ(x)·φ(x') approximates the Gaussian kernel exp(−‖x − x'‖²/2ℓ²) (Rahimi & Recht, 2007). W
  depends on train.seed only, never on data.
- Labelled embedding of a patch (the paper's class-conditional embedding, plus its label
  counts): u(x, y) = [φ(x) ⊗ e_y, e_y] / √2, with e_y the one-hot label; ‖u‖ = 1.
- Units: under `unit: patient` a patient contributes v = the mean of u over its patches (norm ≤ 1
  by convexity); under `unit: patch` each patch contributes its own u. Public (synthetic) records
  are units of their own.
- Release: S̃ = Σ_units v + N(0, σ²I), once. Adding or removing one unit moves the sum by its v,
  of norm ≤ 1: L2 sensitivity 1 under add/remove adjacency, so this is one Gaussian release
  (dpmammo.privacy.mechanisms.gaussian_release), σ calibrated to (target ε, δ). The noise comes
  from the stage's secret key (dpmammo.privacy.secret: ChaCha20 keyed with 256 bits of OS
  entropy), four draws per value against floating-point attacks as Opacus's secure mode.
- From S̃ alone: per-class noisy sums of φ and noisy class counts (counts clamped to ≥ 1), hence
  the per-class mean embeddings μ_c the generator must match.
- Generator: each step draws a batch with as many patches of each class, and Adam minimises an
  unbiased estimate of Σ_c ‖E φ(G(z, c)) − μ_c‖² (`squared_distance`). Per-class means are the
  reference code's per-class normalisation (its embedding columns divided by the class weights)
  without the sampling noise of drawing labels. It touches no private data: post-processing of
  S̃, which spends no budget, so its loss may be logged and released.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from dpmammo import __version__
from dpmammo.data.images import load_images, to_float
from dpmammo.data.manifest import PatchRecord
from dpmammo.data.sets import generator_training_records, resolve_root, synthetic_provenance, training_data_record
from dpmammo.gan.merf_config import MerfConfig, MerfFeatures
from dpmammo.gan.models import N_CLASSES, build_generator
from dpmammo.gan.train import SAMPLES_DIR, grid_inputs, write_grid
from dpmammo.models import save_weights
from dpmammo.privacy import (StageSpend, check_planned_total, non_dp_stage, release_stage, synthetic_chain,
                             write_privacy)
from dpmammo.privacy.events import GaussianRelease
from dpmammo.privacy.mechanisms import gaussian_release
from dpmammo.privacy.sampling import secret_key, unit_ids
from dpmammo.progress import StepProgress
from dpmammo.runs import RunDir
from dpmammo.train.stage import Stage

STAGE = "dp-merf"
SENSITIVITY = 1.0  # L2 norm bound of one unit's embedding v (see the module docstring)
CHUNK = 512  # records per feature computation (bounds memory for large sets)
_FREQ_OFFSET = 0xF4E0  # the frequencies' stream differs from the seed's own (initialisation, latents)
LOSS_NOTE = ("the generator's loss is post-processing of the released (noisy) embedding; "
             "nothing else is computed from private data")


def train_merf(cfg: MerfConfig, out: str | Path, *, force: bool = False, progress: bool = True) -> dict:
    """Train one DP-MERF generator run into `out` and return its metrics. Resumes an interrupted run.

    Writes config.yaml, model.safetensors (the generator, which `dpmammo gan sample` reads),
    privacy.json, metrics.json (last: it marks the run finished), log.txt, and
    samples/epoch_XXX.png (a row per class) every `train.sample_every` epochs.

    Example:
        >>> cfg = load_generator_config("configs/dp-merf.yaml")  # doctest: +SKIP
        >>> train_merf(cfg, "runs/dp-merf-eps3")  # doctest: +SKIP
    """
    run = RunDir(out)
    with Stage.open(run, cfg, force, device=cfg.train.device, opening=f"{run.path} dpmammo {__version__} (dp-merf)",
                    epochs=cfg.optim.epochs) as stage:  # a checkpoint after every epoch
        return train_merf_run(cfg, stage, progress)


def train_merf_run(cfg: MerfConfig, stage: Stage, progress: bool) -> dict:
    """The body of `train_merf`: one stage in its run directory; `stage.say` writes a line to log.txt."""
    run, say, device = stage.run, stage.say, stage.device

    gen_model = build_generator(cfg.model, cfg.train.seed).to(device)
    opt = torch.optim.Adam(gen_model.parameters(), lr=cfg.optim.lr)
    rng = torch.Generator().manual_seed(cfg.train.seed)  # latents
    freqs = fourier_frequencies(cfg.features, cfg.train.seed)
    parts = {"generator": gen_model, "opt": opt}
    # The release is made once and checkpointed: a resume reads it back, which spends nothing;
    # drawing new noise would release the data a second time.
    state = stage.begin(parts, None, rng, resumed_note=" (the release is read back, not redone)")
    if not stage.resuming:
        state.update(private_release(cfg, freqs, say))
        stage.save_checkpoint()  # before anything is derived from it
    # The run's record, built now: a chain total the accountant cannot evaluate refuses before the
    # generator trains, not after.
    upstream = [StageSpend.model_validate(s) for s in state["upstream"]]
    if cfg.privacy is not None:
        # σ read back from the checkpoint on a resume: the release was made once, by the first start.
        release = GaussianRelease(noise_multiplier=state["sigma"], sensitivity=SENSITIVITY, unit=cfg.privacy.unit)
        own = release_stage(stage=STAGE, run=run.name, data=cfg.data.train, privacy=cfg.privacy, release=release,
                            note="what is released: the sum of per-unit embeddings; the generator is post-processing")
    else:
        own = non_dp_stage(stage=STAGE, run=run.name, data=cfg.data.train, n_private=state["n_private"])
    check_planned_total(upstream, own)
    # From here on nothing touches private data: everything below is post-processing of the release.
    target, freqs = class_targets(state["release"]).to(device), freqs.to(device)
    fixed_z, fixed_y = grid_inputs(cfg.model, cfg.train.seed)

    o = cfg.optim
    bar = StepProgress(enabled=progress)
    with bar:
        task = bar.add_task(STAGE, total=o.epochs * o.steps_per_epoch, completed=stage.epoch * o.steps_per_epoch)
        for epoch in range(stage.epoch, o.epochs):
            gen_model.train()
            loss = 0.0
            for _ in range(o.steps_per_epoch):
                loss += merf_step(gen_model, opt, freqs, target, cfg, rng, device)
                bar.advance(task)
            row = {"epoch": epoch + 1, "loss_g": loss / o.steps_per_epoch}
            stage.end_epoch(row)
            bar.update(task, description=f"epoch {epoch + 1}/{o.epochs} loss {row['loss_g']:.5f}")
            say(f"epoch {epoch + 1} loss_g {row['loss_g']:.6f}")
            every = cfg.train.sample_every
            if every and ((epoch + 1) % every == 0 or epoch + 1 == o.epochs):
                write_grid(gen_model, fixed_z, fixed_y, run.path / SAMPLES_DIR / f"epoch_{epoch + 1:03d}.png", device)
            stage.checkpoint_if_due()

    # Outputs: generator weights, privacy record, metrics (written last: it marks the run finished).
    save_weights(gen_model, run.weights)
    privacy = write_privacy(run.privacy, own, upstream, notes=[LOSS_NOTE])
    metrics = {
        "history": stage.history, "train_size": state["train_size"], "n_private": state["n_private"],
        "training_data": state["training_data"], "unit": cfg.privacy.unit if cfg.privacy else None,
        "noise_multiplier": state["sigma"],
        "class_counts": state["release"]["counts"].tolist(),  # noisy under DP; per patient, fractional
    }
    return stage.finish(metrics, privacy, f"done after {stage.epoch} epochs; {privacy.describe()}")


def private_release(cfg: MerfConfig, freqs: torch.Tensor, say) -> dict:
    """Read the private sets and release their labelled mean embedding, once (the only private step).

    Returns the checkpoint state of the release: the released vector decoded into per-class sums
    and counts, σ, the data sizes and the chain of any synthetic inputs.
    """
    root = resolve_root(cfg.data.root)
    records = generator_training_records(root, cfg.data.train)
    is_private = [r.source == "real" for r in records]
    unit = cfg.privacy.unit if cfg.privacy is not None else "patch"
    units = unit_ids([r.patient for r in records], is_private, unit, ", ".join(cfg.data.train))
    n_private_units = len(torch.unique(units[torch.tensor(is_private)]))
    upstream = upstream_chain(records)

    def total() -> torch.Tensor:  # the only read of private pixels
        images = load_images(records, cfg.model.image_size)
        labels = torch.tensor([r.label for r in records], dtype=torch.long)
        return embedding_sum(images, labels, unit_weights(units), freqs, cfg.features.resolution)

    sigma = 0.0
    if cfg.privacy is None:
        released = total()
        say(f"non-private: the mean embedding of {len(records)} patches is used without noise")
    else:  # δ checked and σ calibrated before a pixel is read
        p = cfg.privacy
        released, release = gaussian_release(total, sensitivity=SENSITIVITY, privacy=p,
                                             n_private_units=n_private_units, key=secret_key(p, cfg.train.seed))
        sigma = release.noise_multiplier
        say(f"released the mean embedding of the units ({p.unit}) with sigma={sigma:.4f} "
            f"(sensitivity {SENSITIVITY:g}) target eps={p.target_epsilon} delta={p.delta:g} accountant={p.accountant}"
            + (" SEEDED NOISE (tests only): no guarantee" if p.seeded_noise_for_tests else ""))
    return {"release": decode_release(released, cfg.features.n_features), "sigma": sigma,
            "train_size": len(records),
            "n_private": sum(is_private), "upstream": upstream,
            "training_data": training_data_record(records, root)}


def fourier_frequencies(features: MerfFeatures, seed: int) -> torch.Tensor:
    """W (n_features/2 × resolution²), rows from N(0, I/ℓ²), ℓ = length_scale·resolution; data-independent."""
    g = torch.Generator().manual_seed(seed + _FREQ_OFFSET)
    ell = features.length_scale * features.resolution
    return torch.randn(features.n_features // 2, features.resolution ** 2, generator=g) / ell


def fourier_features(x01: torch.Tensor, freqs: torch.Tensor, resolution: int) -> torch.Tensor:
    """φ of images (N, 1, S, S) with pixels in [0, 1]: pooled to `resolution`, each row of unit norm."""
    x = F.adaptive_avg_pool2d(x01, resolution).flatten(1)
    xw = x @ freqs.T
    return torch.cat([xw.cos(), xw.sin()], dim=1) / math.sqrt(freqs.shape[0])


def record_embeddings(phi: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """u(x, y) = [φ(x) ⊗ e_y, e_y] / √2 for each row: N × (C·D + C), each row of norm ‖φ(x)‖ = 1.

    Layout: class c's block φ·[y = c] at [c·D, (c+1)·D), then the C one-hot entries.
    """
    n, d = phi.shape
    joint = torch.zeros(n, N_CLASSES, d, dtype=phi.dtype, device=phi.device)
    joint[torch.arange(n), labels] = phi
    onehot = F.one_hot(labels, N_CLASSES).to(phi.dtype)
    return torch.cat([joint.flatten(1), onehot], dim=1) / math.sqrt(2)


def unit_weights(units: torch.Tensor) -> torch.Tensor:
    """1 / (number of records of the record's unit): summing weighted records sums unit means."""
    return 1.0 / torch.bincount(units).double()[units]


def embedding_sum(images: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, freqs: torch.Tensor,
                  resolution: int) -> torch.Tensor:
    """Σ_units v_unit = Σ_records weight · u(x, y), for uint8 images (N, 1, S, S): what is released
    before noise. Each unit's v is a mean of unit vectors, so one unit moves this sum by ≤ 1 in L2."""
    total = torch.zeros(N_CLASSES * freqs.shape[0] * 2 + N_CLASSES, dtype=torch.float64)
    for s in range(0, len(images), CHUNK):
        phi = fourier_features(to_float(images[s:s + CHUNK]), freqs, resolution).double()
        total += (record_embeddings(phi, labels[s:s + CHUNK]) * weights[s:s + CHUNK, None]).sum(0)
    return total


def decode_release(released: torch.Tensor, n_features: int) -> dict[str, torch.Tensor]:
    """The released vector as per-class sums of φ (C × D) and class counts (C), the 1/√2 undone."""
    cd = N_CLASSES * n_features
    return {"sums": (released[:cd] * math.sqrt(2)).view(N_CLASSES, n_features).float(),
            "counts": (released[cd:] * math.sqrt(2)).float()}


def class_targets(release: dict[str, torch.Tensor]) -> torch.Tensor:
    """μ_c = noisy sum of φ over class c / noisy count of c (clamped to ≥ 1: noise can make it tiny
    or negative), C × D."""
    return release["sums"] / release["counts"].clamp(min=1.0)[:, None]


def squared_distance(phi: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Unbiased estimate of Σ_c ‖E φ(G(z, c)) − μ_c‖² from rows φ with labels (≥ 2 rows per class).

    ‖mean φ‖² of b rows overestimates ‖E φ‖² by (1 − ‖E φ‖²)/b, a term that rewards a generator
    for making its patches alike (collapse); with ‖φ‖ = 1 exactly, the U-statistic
    (‖Σ φ‖² − b) / (b(b − 1)) removes it (the unbiased MMD² of Gretton et al., 2012).
    """
    sums = torch.zeros(N_CLASSES, phi.shape[1], dtype=phi.dtype, device=phi.device).index_add_(0, labels, phi)
    b = torch.bincount(labels, minlength=N_CLASSES).to(phi.dtype)
    self_term = (sums.pow(2).sum(1) - b) / (b * (b - 1))
    return (self_term - 2 * (sums * target).sum(1) / b + target.pow(2).sum(1)).sum()


def merf_step(gen_model, opt, freqs: torch.Tensor, target: torch.Tensor, cfg: MerfConfig, rng: torch.Generator,
              device) -> float:
    """One Adam step on Σ_c ‖E φ(G(z, c)) − μ_c‖², on a batch with every class equally often."""
    b = cfg.optim.batch_size
    z = torch.randn(b, cfg.model.latent_dim, generator=rng).to(device)
    y = (torch.arange(b) % N_CLASSES).to(device)
    fake01 = gen_model(z, y).add(1).div(2)  # the generator's [-1, 1] → the features' [0, 1]
    loss = squared_distance(fourier_features(fake01, freqs, cfg.features.resolution), y, target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def upstream_chain(records: list[PatchRecord]) -> list[dict]:
    """The privacy chains of synthetic training folders (their generators' stages), as dicts."""
    return [s.model_dump(mode="json") for s in synthetic_chain(synthetic_provenance(records))]
