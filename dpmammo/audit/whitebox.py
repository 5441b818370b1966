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

from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import numpy as np
import torch
from torch import nn

from dpmammo.data.manifest import PatchRecord
from dpmammo.errors import DpMammoError
from dpmammo.privacy import make_private
from dpmammo.privacy.accounting import epsilon_of
from dpmammo.privacy.config import PrivacyConfig
from dpmammo.privacy.engine import DPSetup
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
                    prior: list[tuple[float, float, int]] = (), device: torch.device | str = "cpu",
                    adversary_knows_seed: bool = False,
                    mutate: Optional[Callable[[DPSetup], None]] = None) -> CanaryRun:
    """Train `model` with DP-SGD on `records` plus the included canaries, observing every noisy update.

    Args:
        model, optimizer, criterion: as the training loop builds them (not yet private).
        inputs, labels: one row per record of `records` (canary rows are appended here as zeros).
        privacy: the recipe's privacy block; per-sample gradients are needed to place canary
            gradients, so grad_sample_mode must be hooks or functorch.
        take: inputs of a batch at a step, `take(inputs, idx, step)` (views, cached features);
            default `inputs[idx]`.
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
                              "the audit's training set")
    dp = make_private(model=model, optimizer=optimizer, sampler=sampler, epochs=epochs, config=privacy,
                      criterion=criterion, prior=prior)
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
        batch = sampler.next_batch()
        train_step(trainable, dp.optimizer, dp.criterion, dp, batch, take(inputs, batch.idx, step), labels[batch.idx],
                   physical, device)
        if step + 1 < dp.planned_steps:
            dp.draw_next_noise()
    theta = torch.cat([p.detach().reshape(-1).float().cpu() for p in params])
    promised = epsilon_of([*dp.count_event, (dp.noise_multiplier, dp.sample_rate, dp.planned_steps)],
                          privacy.delta, privacy.accountant)
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


# --- scoring: Steinke et al.'s bound and Andrew et al.'s estimate per threat model ------------

THREAT_MODELS = {"all-iterates": "white-box all iterates", "all-iterates-sum": "white-box all iterates",
                 "final-model": "white-box final model"}
# Fixed before any audited run (chosen on simulations of the subsampled Gaussian mechanism, not on
# an audit): the bound of the likelihood-ratio score, the estimate of the near-Gaussian sum.
PRIMARY_BOUND, PRIMARY_ESTIMATE = "all-iterates", "all-iterates-sum"
K_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5)  # k per side (top k "in", bottom k "out"), of M


def k_grid(m: int) -> list[int]:
    return sorted({max(1, round(m * f)) for f in K_FRACTIONS})


def score_canaries(run: CanaryRun, *, confidence: float, seed: int, n_boot: int = 1000):
    """[(AttackResult, ROC curve)] of each score of `run`: Steinke's two-sided bound and the GDP estimate."""
    from dpmammo.audit import gdp, one_run
    from dpmammo.audit.record import Estimate, GdpEstimate, OneRunBound
    from dpmammo.audit.run import attack_result

    inc = run.canaries.included
    grid = k_grid(run.canaries.m)
    results = []
    for name, scores in run.scores().items():
        eps, _, guesses, correct = one_run.best_bound(scores, inc, grid, delta=run.delta, confidence=confidence,
                                                      two_sided=True)
        mu, est = gdp.gdp_estimate(scores, inc, delta=run.delta, n_boot=n_boot, seed=seed, confidence=confidence)
        estimate = GdpEstimate(mu=Estimate(value=mu.value, ci_low=mu.low, ci_high=mu.high),
                               epsilon=Estimate(value=est.value, ci_low=est.low, ci_high=est.high), delta=run.delta)
        bound = OneRunBound(canaries=run.canaries.m, included=int(inc.sum()), k_grid=grid, guesses=guesses,
                            correct=correct, two_sided=True)
        result, curve = attack_result(name, scores, inc, eps, bound, confidence=confidence, seed=seed, n_boot=n_boot)
        results.append((result.model_copy(update={"threat_model": THREAT_MODELS[name], "gdp_estimate": estimate}),
                        curve))
    return results
