"""White-box one-run audit with gradient canaries, through the real DP-SGD path.

After Nasr et al. 2023 ("Tight Auditing of Differentially Private Machine Learning") and the
white-box setting of Steinke, Nasr & Jagielski 2023 (one run): M canaries, each a unit of the
recipe's privacy unit (a patient of `patches` records, or a patch), each added to the training
set with probability ½ (the auditor knows which). A canary's records have a fixed per-sample
gradient, norm·d_i for a unit direction d_i (a Dirac: one coordinate of the trainable parameters;
or a random Gaussian direction), whatever the model computes for them. Nothing of DP-SGD is
re-implemented: canaries are units of the same `PoissonUnits` sampler (rate q from the same noisy
count), their gradients enter `UnitDPOptimizer` before a patient's rows are summed (the
optimizer's `sample_hook`), and Opacus clips, adds the SecretKey's noise and scales, exactly as
for real units. The step itself is the training loop's `train_step`.

What the adversary sees (threat models):
- all iterates: every noisy update, Σ clipped unit gradients + noise, taken where Opacus's step
  hook sees it (after noise, before the optimizer's own step); in units of C, its projection on
  d_i is x_ti. Two scores: Σ_t x_ti (Andrew et al.'s statistic, near Gaussian), and the
  log-likelihood ratio of "the canary joins each step with probability q and adds 1" against
  "it adds nothing" under N(0, σ²) noise, Σ_t log(1 − q + q·exp((x_ti − ½)/σ²)), the
  Neyman–Pearson test for one canary when the rest of the update is noise (σ and q are public).
- final model: <θ_0 − θ_T, d_i>, the last iterate only.

With SGD the iterates are the noisy updates; with AdamW or momentum the updates are a function of
them, so "all iterates" here means the noisy gradients (DP-SGD's release, of which any iterate is
post-processing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Sequence

import numpy as np
import torch
from torch import nn

from dpmammo.data.manifest import PatchRecord
from dpmammo.errors import DpMammoError
from dpmammo.privacy import make_private
from dpmammo.privacy.accounting import epsilon_of
from dpmammo.privacy.config import PrivacyConfig
from dpmammo.privacy.engine import DPSetup
from dpmammo.privacy.events import PrivacyEvent
from dpmammo.privacy.ledger import StageSpend, check_planned_total, dp_stage
from dpmammo.privacy.sampling import batch_selection
from dpmammo.privacy.secret import SecretKey

Directions = Literal["dirac", "gaussian"]
CANARY_DATASET = "canary"


@dataclass
class GradientCanaries:
    """M canaries: which are included, and the direction of each (a coordinate or a unit vector
    of the flattened trainable parameters)."""

    included: np.ndarray  # (M,) bool
    patches: int  # records of one canary unit
    coords: Optional[torch.Tensor] = None  # (M,) long, Dirac
    vectors: Optional[torch.Tensor] = None  # (M, P) float32 unit rows, Gaussian

    @classmethod
    def draw(cls, m: int, n_params: int, *, patches: int, directions: Directions, seed: int) -> "GradientCanaries":
        """Membership (each canary in with probability ½) and directions from the audit's seed:
        the auditor's own randomness, never the DP noise or sampling."""
        rng = np.random.default_rng([seed, 24])
        included = rng.random(m) < 0.5
        if directions == "dirac":
            if m > n_params:
                raise DpMammoError(f"{m} Dirac canaries need as many trainable coordinates; the model has {n_params}: "
                                   "use fewer canaries or directions gaussian")
            return cls(included, patches, coords=torch.from_numpy(rng.choice(n_params, m, replace=False)))
        v = torch.from_numpy(rng.standard_normal((m, n_params)).astype(np.float32))
        return cls(included, patches, vectors=v / v.norm(dim=1, keepdim=True))

    @property
    def m(self) -> int:
        return len(self.included)

    def records(self) -> list[PatchRecord]:
        """The included canaries as private records: one patient `canary<i>` of `patches` records
        (never read from disk: their inputs are zeros and their gradients replaced)."""
        return [PatchRecord(path=f"{CANARY_DATASET}/{i}/{j}", label=0, patient=f"canary{i}", dataset=CANARY_DATASET,
                            split="train", source="real")
                for i in np.flatnonzero(self.included) for j in range(self.patches)]

    def project(self, flat: torch.Tensor) -> torch.Tensor:
        """<flat, d_i> for every canary: (M,)."""
        return flat[self.coords] if self.coords is not None else self.vectors @ flat

    def direction_rows(self, ids: torch.Tensor, n_params: int) -> torch.Tensor:
        """(len(ids), P): the unit directions of canaries `ids`."""
        if self.vectors is not None:
            return self.vectors[ids]
        rows = torch.zeros((len(ids), n_params))
        rows[torch.arange(len(ids)), self.coords[ids]] = 1.0
        return rows


def ideal_mu(sigma: float, sample_rate: float, steps: int) -> float:
    """The sum score's in/out shift, in units of the "in" spread, that the ideal mechanism gives (noise
    and canaries alone, no drift from real gradients; record.CanaryMechanism): q·T / √(T·(σ² + q(1 − q)))."""
    q = sample_rate
    return q * steps / math.sqrt(steps * (sigma * sigma + q * (1 - q)))


@dataclass
class CanaryRun:
    """What one white-box canary run observed, and its promise."""

    canaries: GradientCanaries
    updates: np.ndarray  # (T, M): x_ti, each step's noisy update projected on d_i, in units of C
    final: np.ndarray  # (M,): <θ_0 − θ_T, d_i>
    sigma: float  # the calibrated noise multiplier (what the record states)
    sample_rate: float
    steps: int
    delta: float
    epsilon: float  # the stage's promised ε for (σ, q, steps) and the unit-count release
    setup: DPSetup = field(repr=False)

    def scores(self) -> dict[str, np.ndarray]:
        """The canary scores of each attack (higher: "included")."""
        x, s, q = self.updates, self.sigma, self.sample_rate
        llr = np.logaddexp(np.log1p(-q), np.log(q) + (x - 0.5) / (s * s)).sum(0) if q < 1 else ((x - 0.5) / (s * s)).sum(0)
        return {"all-iterates": llr, "all-iterates-sum": x.sum(0), "final-model": self.final}


def canary_training(*, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module, inputs: torch.Tensor,
                    labels: torch.Tensor, records: list[PatchRecord], privacy: PrivacyConfig, epochs: int,
                    batch_size: int, physical: int, seed: int, canaries: GradientCanaries,
                    take: Optional[Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = None,
                    prior: Sequence[PrivacyEvent] = (), device: torch.device | str = "cpu",
                    adversary_knows_seed: bool = False, views_per_record: int = 1,
                    mutate: Optional[Callable[[DPSetup], None]] = None,
                    upstream: Sequence[StageSpend] = ()) -> CanaryRun:
    """Train `model` with DP-SGD on `records` plus the included canaries, observing every noisy update.

    Args:
        model, optimizer, criterion: as the training loop builds them (not yet private).
        inputs, labels: one row per record of `records` (canary rows are appended here as zeros).
        privacy: the recipe's privacy block; per-sample gradients are needed to place canary
            gradients, so grad_sample_mode must be hooks or functorch.
        take: inputs of a batch at a step, `take(inputs, idx, step)` (views, cached features);
            default `inputs[idx]`. With `views_per_record` k > 1, idx holds each sampled record k
            times in a row (the loop's Batch.repeated(k)): k views of it.
        views_per_record: train.augment_multiplicity; the k rows of a canary record each carry its
            gradient, summed with its unit's other rows before the unit's one clip, as in training.
        adversary_knows_seed: the adversary rebuilds the key `train.seed` would give
            (SecretKey.for_tests) and subtracts that noise from what it observes: useless against
            a secret key, total against seeded noise (a mutation test).
        mutate: TESTS ONLY: break the mechanism after make_private (mutation tests).
    """
    from dpmammo.train.loop import train_step  # the loop's own step (audit sits right of train)

    if privacy.grad_sample_mode not in ("hooks", "functorch"):
        raise DpMammoError(f"gradient canaries replace per-sample gradients: grad_sample_mode must be hooks or "
                           f"functorch, got {privacy.grad_sample_mode}")
    if privacy.unit == "patch" and canaries.patches != 1:
        raise DpMammoError("under unit patch a canary is one patch: set canary patches to 1")
    extra = canaries.records()
    all_records = [*records, *extra]
    zeros = torch.zeros((len(extra), *inputs.shape[1:]), dtype=inputs.dtype)
    inputs, labels = torch.cat([inputs, zeros]), torch.cat([labels, torch.zeros(len(extra), dtype=labels.dtype)])
    take = take or (lambda x, idx, step: x[idx])

    sampler = batch_selection(all_records, privacy, batch_size, torch.Generator().manual_seed(seed), seed, physical,
                              "the audit's training set", views_per_record=views_per_record)
    dp = make_private(model=model, optimizer=optimizer, sampler=sampler, epochs=epochs, config=privacy,
                      criterion=criterion, prior=prior)
    check_planned_total(list(upstream), dp_stage(stage="classifier", run="audit", data=[], dp=dp, planned=True))
    params = list(dp.optimizer.params)
    n_params = sum(p.numel() for p in params)
    first = len(records)
    owner = torch.from_numpy(np.flatnonzero(canaries.included)).repeat_interleave(canaries.patches)
    norm = privacy.max_grad_norm
    dp.optimizer.sample_hook = _injector(canaries, owner, first, params, n_params, norm)
    observed: list[torch.Tensor] = []
    replay = SecretKey.for_tests(seed) if adversary_knows_seed else None
    account = dp.optimizer.step_hook

    def observe(opt) -> None:
        account(opt)
        scale = opt.expected_batch_size * opt.accumulated_iterations / norm
        grads = [p.grad.detach().reshape(-1) for p in opt.params]
        if replay is not None:  # the noise this step added, as NoiseAhead drew it from the rebuilt key
            noise = replay.gaussian_noise("noise", len(observed), [p.shape for p in opt.params], opt.noise_std())
            grads = [g - n.reshape(-1).to(g.dtype) / (opt.expected_batch_size * opt.accumulated_iterations)
                     for g, n in zip(grads, noise)]
        observed.append(canaries.project(torch.cat(grads).float().cpu()) * scale)

    dp.optimizer.attach_step_hook(observe)
    if mutate is not None:
        mutate(dp)
    theta0 = torch.cat([p.detach().reshape(-1).float().cpu() for p in params])
    trainable = dp.model
    trainable.train()
    for step in range(dp.planned_steps):
        batch = sampler.next_batch().repeated(views_per_record)
        train_step(trainable, dp, batch, take(inputs, batch.idx, step), labels[batch.idx], physical, device)
        if step + 1 < dp.planned_steps:
            dp.draw_next_noise()
    theta = torch.cat([p.detach().reshape(-1).float().cpu() for p in params])
    promised = epsilon_of(dp.planned_events(), privacy.delta, privacy.accountant)
    return CanaryRun(canaries=canaries, updates=torch.stack(observed).double().numpy(),
                     final=canaries.project(theta0 - theta).double().numpy(), sigma=dp.noise_multiplier,
                     sample_rate=dp.sample_rate, steps=dp.planned_steps, delta=privacy.delta, epsilon=promised,
                     setup=dp)


def _injector(canaries: GradientCanaries, owner: torch.Tensor, first: int, params, n_params: int, norm: float):
    """The optimizer's sample hook: rows of canary records get norm·d_i, split over the parameters."""
    sizes = [p.numel() for p in params]

    def hook(records: Optional[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if records is None or len(records) == 0:
            return grads
        rows = (records >= first).nonzero().squeeze(1)
        if len(rows) == 0:
            return grads
        ids = owner[records[rows] - first]
        parts = (canaries.direction_rows(ids, n_params) * norm).split(sizes, dim=1)
        out = []
        for g, part, p in zip(grads, parts, params):
            g = g.clone()
            g[rows.to(g.device)] = part.reshape(len(rows), *p.shape).to(device=g.device, dtype=g.dtype)
            out.append(g)
        return out

    return hook


# --- scoring: Steinke et al.'s and the f-DP bound, Andrew et al.'s estimate, per threat model ------------

THREAT_MODELS = {  # attack → what its adversary sees; the method's rows, in this order
    "all-iterates": "white-box all iterates", "all-iterates-sum": "white-box all iterates",
                 "final-model": "white-box final model"}
# Fixed before any audited run (chosen on simulations of the subsampled Gaussian mechanism, not on
# an audit): the bound of the likelihood-ratio score, the estimate of the near-Gaussian sum.
PRIMARY_BOUND, PRIMARY_ESTIMATE = "all-iterates", "all-iterates-sum"
# The scores the Gaussian-pair bound is computed for: the sum of T noisy projections is near Gaussian
# by the central limit theorem. The likelihood-ratio score is skewed by construction, and the final
# model under momentum or AdamW is no sum of the updates, so neither meets the premise.
GAUSSIAN_SCORES = ("all-iterates-sum",)


def score_canaries(run: CanaryRun, *, confidence: float, seed: int, n_boot: int = 1000):
    """[(AttackResult, ROC curve)] of each score of `run`: the ε lower bound (the larger of Steinke et
    al.'s two-sided bound and Mahloujifar et al.'s f-DP bound on the same guesses, each proved at half
    the significance, so that their maximum holds at `confidence`), the GDP estimate, and for the
    GAUSSIAN_SCORES the Gaussian-pair bound (at `confidence` on its own)."""
    from dpmammo.audit import fdp, gdp, one_run
    from dpmammo.audit.record import Estimate, FdpBound, GdpEstimate, OneRunBound
    from dpmammo.audit.stats import attack_result

    inc = run.canaries.included
    grid = one_run.k_grid(run.canaries.m)
    each = 1.0 - (1.0 - confidence) / 2  # Bonferroni over the two bounds
    results = []
    for name, scores in run.scores().items():
        steinke, _, guesses, correct = one_run.best_bound(scores, inc, grid, delta=run.delta, confidence=each,
                                                          two_sided=True)
        f = fdp.best_bound(scores, inc, grid, delta=run.delta, confidence=each, two_sided=True)
        mu, est = gdp.gdp_estimate(scores, inc, delta=run.delta, n_boot=n_boot, seed=seed, confidence=confidence)
        estimate = GdpEstimate(mu=Estimate(value=mu.value, ci_low=mu.low, ci_high=mu.high),
                               epsilon=Estimate(value=est.value, ci_low=est.low, ci_high=est.high), delta=run.delta)
        bound = OneRunBound(canaries=run.canaries.m, included=int(inc.sum()), k_grid=grid, guesses=guesses,
                            correct=correct, two_sided=True, epsilon=steinke, confidence=each)
        fdp_bound = FdpBound(mu=f.mu, epsilon=f.epsilon, delta=run.delta, confidence=each, k_grid=grid,
                             guesses=f.guesses, correct=f.correct, two_sided=True)
        pair = None
        if name in GAUSSIAN_SCORES and min(inc.sum(), (~inc).sum()) >= gdp.MIN_SIDE:
            pair = gdp.gaussian_pair_bound(scores, inc, delta=run.delta, confidence=confidence)
        result, curve = attack_result(name, scores, inc, max(steinke, f.epsilon), bound, confidence=confidence,
                                      seed=seed, n_boot=n_boot)
        results.append((result.model_copy(update={"threat_model": THREAT_MODELS[name], "gdp_estimate": estimate,
                                                   "fdp_bound": fdp_bound, "gaussian_bound": pair}), curve))
    return results


# --- the recipe-level audit: `dpmammo audit CONFIG --method gradient-canary` ------------------

def audit_gradient_canaries(cfg, out, settings, *, progress: str = "lines"):
    """Train recipe `cfg` once with `settings.canaries` gradient canaries and write `out`/audit.json.

    The recipe's data, model (parent weights, frozen backbone, cached features), optimiser, loss,
    flips and their multiplicity, batch size, epochs and privacy block, all as `fit` builds them,
    except that per-sample gradients are formed (grad_sample_mode hooks) so that canary gradients
    can be placed; the other modes are tested equal to hooks against a per-example loop
    (tests/test_fast_dp.py).
    """
    import sys
    import time
    from pathlib import Path

    from dpmammo import __version__
    from dpmammo.audit.plot import roc_plot
    from dpmammo.audit.record import AUDIT_JSON, ROC_PNG, AuditRecord, CanaryMechanism, write_audit
    from dpmammo.train.build import initial_model
    from dpmammo.data.images import N_VIEWS, load_images, load_labels
    from dpmammo.data.sets import check_training_sets, resolve_root
    from dpmammo.device import resolve_device
    from dpmammo.privacy.ledger import compose, prior_history
    from dpmammo.train import features as fc
    from dpmammo.train.loop import build_optimizer, flip_views, image_batch, input_chain

    out = Path(out)
    if (out / AUDIT_JSON).exists():
        raise DpMammoError(f"{out} already holds a finished audit ({AUDIT_JSON}); choose another --out")
    if cfg.privacy is None:
        raise DpMammoError("a gradient-canary audit measures a DP mechanism: the recipe has no privacy block; audit "
                           "a non-private recipe with --method lira, rmia or one-run")
    if cfg.data.audit_split is not None:
        raise DpMammoError("the config sets data.audit_split: a gradient-canary audit trains on the whole private "
                           "set plus its canaries; remove it")
    if cfg.train.centre_features is not None:
        raise DpMammoError("the config sets train.centre_features: a gradient-canary audit measures the DP-SGD steps "
                           "alone, not the centre's release before them; remove it, or audit the recipe with --method "
                           "lira, rmia or one-run")
    t0 = time.time()
    say = (lambda msg: print(f"audit: {msg}", file=sys.stderr, flush=True)) if progress != "off" else (lambda msg: None)
    root = resolve_root(cfg.data.root)
    records = check_training_sets(root, cfg.data.train, cfg.data.val)
    device = resolve_device(cfg.train.device)
    model = initial_model(cfg)
    upstream = input_chain(cfg, records)
    images, labels = load_images(records, model.input_size), load_labels(records)
    model.to(device)
    flips = cfg.train.augment == "flips"
    k = cfg.train.augment_multiplicity
    views = (lambda step, idx: flip_views(cfg.train.seed, step, idx, k)) if flips else (lambda step, idx: None)
    if model.is_backbone_frozen and cfg.train.feature_cache:
        inputs = fc.cached_features(model, records, images, N_VIEWS if flips else 1, device=device, say=say)
        trainable, physical = model.head, (len(records) + settings.canaries * settings.canary_patches) * k
        take = lambda x, idx, step: fc.take_views(x, idx, views(step, idx))  # noqa: E731
    else:
        inputs, trainable, physical = images, model, cfg.train.physical_batch_size
        take = lambda x, idx, step: image_batch(x, idx, views(step, idx))  # noqa: E731
    params = [p for p in trainable.parameters() if p.requires_grad]
    mode = cfg.privacy.grad_sample_mode if cfg.privacy.grad_sample_mode == "functorch" else "hooks"
    privacy = cfg.privacy.model_copy(update={"grad_sample_mode": mode})
    canaries = GradientCanaries.draw(settings.canaries, sum(p.numel() for p in params), patches=settings.canary_patches,
                                     directions=settings.directions, seed=settings.seed)
    say(f"{settings.canaries} {settings.directions} gradient canaries ({int(canaries.included.sum())} included, "
        f"{settings.canary_patches} patch(es) each), {cfg.privacy.unit} unit, target ε={cfg.privacy.target_epsilon}")
    run = canary_training(model=trainable, optimizer=build_optimizer(cfg, params),
                          criterion=nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing), inputs=inputs,
                          labels=labels, records=records, privacy=privacy, epochs=cfg.train.epochs,
                          batch_size=cfg.train.batch_size, physical=physical, seed=cfg.train.seed, canaries=canaries,
                          take=take, prior=prior_history(upstream, privacy), device=device, views_per_record=k,
                          upstream=upstream)
    say(f"trained: σ={run.sigma:.4f} q={run.sample_rate:.4f} steps={run.steps}, promised ε={run.epsilon:.3f}/{privacy.unit} (this stage)")
    scored = score_canaries(run, confidence=settings.confidence, seed=settings.seed)
    own = dp_stage(stage="classifier", run=f"audit {out.name}", data=cfg.data.train, dp=run.setup, planned=True)
    results = [r for r, _ in scored]
    primary = next(r for r in results if r.attack == PRIMARY_BOUND)
    summed = next(r for r in results if r.attack == PRIMARY_ESTIMATE)
    record = AuditRecord(
        method="gradient-canary", reference_models=0, unit=cfg.privacy.unit, seed=settings.seed,
        confidence=settings.confidence, units=canaries.m, target_members=int(canaries.included.sum()),
        promised=compose([*upstream, own], delta=own.delta), stage_epsilon=run.epsilon, delta=run.delta,
        primary=PRIMARY_BOUND, measured_epsilon=primary.epsilon_lower_bound, attacks=results,
        estimated_epsilon=summed.gdp_estimate.epsilon.value, estimate_attack=PRIMARY_ESTIMATE,
        gaussian_epsilon=summed.gaussian_bound.epsilon if summed.gaussian_bound else None,
        mechanism=CanaryMechanism(noise_multiplier=run.sigma, sample_rate=run.sample_rate, steps=run.steps,
                                  ideal_mu=ideal_mu(run.sigma, run.sample_rate, run.steps)),
        target=str(out.resolve()),
        notes=_notes(settings, mode, cfg.privacy.grad_sample_mode), wall_time_s=round(time.time() - t0, 1),
        dpmammo_version=__version__)
    out.mkdir(parents=True, exist_ok=True)
    roc_plot(record, {r.attack: curve for r, curve in scored}, out / ROC_PNG)
    write_audit(out / AUDIT_JSON, record)
    return record


def _notes(settings, mode: str, recipe_mode: str) -> list[str]:
    from dpmammo.audit import gdp

    return [
        f"white-box one-run audit: {settings.canaries} gradient canaries ({settings.directions} directions, norm C, "
        f"{settings.canary_patches} record(s) each), each a unit of privacy added with probability 1/2; `units` counts "
        "the canaries and `target_members` the included ones; every real unit is always trained on",
        "canary gradients replace their records' per-sample gradients before a unit's rows are summed, then pass "
        "Opacus's clipping and the secret-key noise like every real unit's, sampled by the same Poisson sampler",
        "threat models: 'white-box all iterates' sees every noisy update (the clipped sum plus noise, before the "
        "optimizer); 'white-box final model' sees θ_T − θ_0 only (the last iterate: the recipe's epoch selection and "
        "weight averaging are not applied)",
        "epsilon_lower_bound: a BOUND, the larger of two on the same guesses (top k guessed in and bottom k out, best "
        "k of the grid with Bonferroni), each proved at half the significance so that the larger holds at the "
        "record's confidence: Steinke, Nasr & Jagielski 2023 (bound.epsilon, a bound on (ε, δ)-DP with no premise) "
        "and Mahloujifar, Melis & Chaudhuri 2025 (fdp_bound: the guesses reject μ-GDP for every μ below fdp_bound.mu; "
        "its ε at δ bounds ε under the premise that the trade-off curve is Gaussian, as DP-SGD's nearly is); "
        "gdp_estimate: an ESTIMATE (Andrew et al. 2024), not a bound",
        f"gaussian_bound ({', '.join(GAUSSIAN_SCORES)}): a BOUND at the record's confidence on its own (Agrawal et "
        "al. 2026) under the premise that the canary scores are independent Gaussian draws, tails included; the sum "
        "of T noisy projections is near Gaussian by the central limit theorem, and normality_p_in/_out test that in "
        "the bulk only; every score counts, none is thresholded, so it usually proves more than the two guess-based "
        f"bounds; `gaussian_epsilon` is its ε (none with fewer than {gdp.MIN_SIDE} canaries on a side)",
        f"primary bound: {PRIMARY_BOUND} (likelihood-ratio score); primary estimate: {PRIMARY_ESTIMATE} (sum score); "
        "both fixed before the run",
        f"per-sample gradients: grad_sample_mode {mode} (the recipe says {recipe_mode})",
    ]
