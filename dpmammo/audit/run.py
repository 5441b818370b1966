"""Audit one recipe: train its target (and reference models) on known member splits, attack,
and write audit.json and a log-scale ROC plot. Entry points: `audit_recipe`, `audit_runs`.

The promised ε is the target's own privacy record (the chain total, with its unit); the
measured ε is the lower bound of the method's primary attack at `confidence`. A bound above
the promise means the attack, the statistics or the DP implementation is wrong.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from dpmammo import __version__
from dpmammo.audit import one_run, stats, whitebox
from dpmammo.audit.attacks import Signals, attacks_of, log_sigmoid, unit_scores
from dpmammo.audit.config import METHOD_WORDS, AuditSettings
from dpmammo.audit.models import (Pool, is_head_only, load_pool, margins, pool_logits, read_split,
                                  train_models)
from dpmammo.audit.record import AUDIT_JSON, ROC_PNG, AuditRecord, OneRunBound, ThresholdBound, write_audit
from dpmammo.audit.stats import attack_result
from dpmammo.audit.splits import (CANARY_DATASET, PROCEDURAL_CANARY_KINDS, canary_split, extra_canary_split,
                                  reference_splits, write_extra_canaries)
from dpmammo.errors import DpMammoError
from dpmammo.progress import StepProgress
from dpmammo.runs import RunDir
from dpmammo.train.config import TrainConfig

ProgressMode = Literal["bar", "lines", "off"]
# (attacks reported, the primary one whose bound is "measured ε") per method
# The attack whose bound an audit of each method reports as its measurement; the reference-model
# methods also report every attack registered for them (dpmammo.audit.attacks.ATTACKS).
METHOD_PRIMARY = {"lira": "lira-online", "rmia": "rmia", "one-run": "one-run",
                  "gradient-canary": whitebox.PRIMARY_BOUND}
if METHOD_PRIMARY.keys() != METHOD_WORDS.keys():  # a method in the table says what it reports here
    raise TypeError(f"METHOD_PRIMARY names {sorted(METHOD_PRIMARY)}, the methods' table {sorted(METHOD_WORDS)}")
MODELS_DIR, CANARIES_DIR = "models", "canaries"


def resolve_method(settings: AuditSettings, cfg: TrainConfig) -> str:
    if settings.method != "auto":
        return settings.method
    return "lira" if is_head_only(cfg) else "one-run"


def audit_unit(settings: AuditSettings, cfg: TrainConfig) -> str:
    if cfg.privacy is None:
        return settings.unit or "patient"
    if settings.unit is not None and settings.unit != cfg.privacy.unit:
        raise DpMammoError(f"audit.unit={settings.unit} differs from the recipe's privacy.unit={cfg.privacy.unit}; "
                           "a DP recipe is audited by its own unit")
    return cfg.privacy.unit


def audit_recipe(cfg: TrainConfig, out: str | Path, settings: AuditSettings, *,
                 progress: ProgressMode = "lines") -> AuditRecord:
    """Train the audit's models of recipe `cfg` into `out`/models and write `out`/audit.json.

    Example:
        >>> audit_recipe(load_config(TrainConfig, "configs/cnn-small-dp.yaml"), "runs/audit",
        ...              AuditSettings(method="one-run"))  # doctest: +SKIP
    """
    out = Path(out)
    if (out / AUDIT_JSON).exists():
        raise DpMammoError(f"{out} already holds a finished audit ({AUDIT_JSON}); choose another --out")
    if cfg.data.audit_split is not None:
        raise DpMammoError("the config sets data.audit_split: the audit draws the member splits itself; remove it")
    method, unit = resolve_method(settings, cfg), audit_unit(settings, cfg)
    extra_kind = settings.canary_kind in ("phantom", "procedural")  # canaries are extra patients
    if extra_kind and settings.method not in ("one-run", "auto"):
        raise DpMammoError(f"canary_kind {settings.canary_kind} is a one-run audit's; the method is {method}: "
                           "use --method one-run (or auto, which uses them where it picks one-run)")
    extra = extra_kind and method == "one-run"  # auto picks LiRA for head-only recipes: no canaries there
    if method == "gradient-canary":
        return whitebox.audit_gradient_canaries(cfg, out, settings, progress=progress)
    if extra:  # a training set of the target's own
        folder = write_extra_canaries(out / CANARIES_DIR, settings.canaries, seed=settings.seed,
                                      size=cfg.model.input_size, patches=settings.canary_patches,
                                      kind=settings.canary_kind)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": [*cfg.data.train, str(folder)]})})
    pool = load_pool(cfg, unit)
    if method == "one-run" and extra:
        splits = [extra_canary_split(pool.units, _canary_units(pool), seed=settings.seed, unit=unit)[0]]
    elif method == "one-run":
        splits = [canary_split(pool.units, settings.canaries, seed=settings.seed, unit=unit)[0]]
    else:
        splits = reference_splits(pool.units, settings.models, seed=settings.seed, unit=unit)
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    with _ModelProgress(progress, len(splits)) as report:
        runs = train_models(cfg, splits, out / MODELS_DIR, len(pool.units), report)
    return audit_runs(runs[0], runs[1:], out, settings.model_copy(update={"method": method}), t0=t0)


def audit_runs(target: Path, references: list[Path], out: str | Path, settings: AuditSettings, *,
               t0: float | None = None) -> AuditRecord:
    """Attack finished runs trained on known member splits (by `audit_recipe`) and write audit.json.

    Refuses any run whose config has no `data.audit_split`: without its member set there is
    nothing to score against.
    """
    t0 = time.time() if t0 is None else t0
    out = Path(out)
    if (out / AUDIT_JSON).exists():
        raise DpMammoError(f"{out} already holds a finished audit ({AUDIT_JSON}); choose another --out")
    cfg, target_split = read_split(Path(target))
    recipe = _without_split(cfg)
    ref_splits = []
    for r in references:
        ref_cfg, split = read_split(Path(r))
        if _without_split(ref_cfg) != recipe or split.unit != target_split.unit:
            raise DpMammoError(f"reference model {r} was trained with another recipe than the target {target}: "
                               "reference models must repeat the target's recipe on other member splits")
        ref_splits.append(split)
    method = settings.method if settings.method != "auto" else ("lira" if references else "one-run")
    if method == "gradient-canary":
        raise DpMammoError("a gradient-canary audit observes its own training run: use audit_recipe (dpmammo audit "
                           "CONFIG --method gradient-canary), not finished runs")
    if (method == "one-run") != (not references) or (references and (len(references) < 4 or len(references) % 2)):
        raise DpMammoError(f"method {method} with {len(references)} reference models: one-run takes none, "
                           "lira and rmia an even number, at least 4 (complementary pairs)")
    unit = target_split.unit
    pool = load_pool(cfg, unit)
    runs = [Path(target), *map(Path, references)]
    labels = np.array([r.label for r in pool.records])
    if method == "one-run":
        scored, n_members = _one_run(cfg, runs[0], pool, labels, target_split, settings)
    else:
        scored, n_members = _reference_attacks(cfg, runs, pool, labels, [target_split, *ref_splits], settings, method)
    results = [r for r, _ in scored]
    privacy = RunDir(target).read_privacy()
    primary = METHOD_PRIMARY[method]
    record = AuditRecord(
        method=method, reference_models=len(references), unit=unit, seed=target_split.seed,
        confidence=settings.confidence, units=len(pool.units), target_members=n_members,
        promised=privacy.total, stage_epsilon=privacy.own.epsilon, delta=privacy.own.delta, primary=primary,
        measured_epsilon=next(r.epsilon_lower_bound for r in results if r.attack == primary), attacks=results,
        target=str(Path(target).resolve()),
        notes=_notes(method, unit, extra=settings.canary_kind if _canary_units(pool) else None),
        wall_time_s=round(time.time() - t0, 1), dpmammo_version=__version__)
    from dpmammo.audit.plot import roc_plot  # matplotlib only when writing

    out.mkdir(parents=True, exist_ok=True)
    roc_plot(record, {r.attack: curve for r, curve in scored}, out / ROC_PNG)
    write_audit(out / AUDIT_JSON, record)
    return record


def _without_split(cfg: TrainConfig) -> dict:
    data = cfg.model_dump(mode="json")
    data["data"].pop("audit_split")
    return data


def _membership(pool: Pool, split) -> np.ndarray:
    keep = set(split.members)
    return np.array([u in keep for u in pool.units])


def _reference_attacks(cfg, runs, pool: Pool, labels, splits, settings: AuditSettings, method: str):
    unit_in = np.stack([_membership(pool, s) for s in splits])  # (models, units)
    record_in = unit_in[:, pool.record_unit]
    sig = margins(pool_logits(cfg, runs, pool.records), labels)
    pop = None
    if method == "rmia":
        pop_labels = np.array([r.label for r in pool.population])
        pop = margins(pool_logits(cfg, runs, pool.population), pop_labels)
    signals = Signals(sig[0], sig[1:], record_in[1:], None if pop is None else pop[0], None if pop is None else pop[1:])
    calibration = signals.calibration()
    n_units, results = len(pool.units), []
    for name, attack in attacks_of(method):
        scores = unit_scores(attack.score(signals), pool.record_unit, n_units)
        cal_scores = unit_scores(attack.score(calibration), pool.record_unit, n_units)
        k = stats.choose_guesses(cal_scores, unit_in[1], delta=_delta(cfg), confidence=settings.confidence)
        tp, fp = stats.top_k_counts(scores, unit_in[0], k)
        n_in, n_out = int(unit_in[0].sum()), int((~unit_in[0]).sum())
        eps = stats.epsilon_from_counts(tp=tp, n_members=n_in, fp=fp, n_nonmembers=n_out, delta=_delta(cfg),
                                        confidence=settings.confidence)
        bound = ThresholdBound(calibration_model=Path(runs[1]).name, guesses=k, true_positives=tp,
                               members=n_in, false_positives=fp, non_members=n_out)
        results.append(_result(name, scores, unit_in[0], eps, bound, settings))
    return results, int(unit_in[0].sum())


def _canary_units(pool: Pool) -> list[str]:
    """The units of the pool that are extra canaries (splits.write_extra_canaries), in pool order."""
    canary = {int(u) for u, r in zip(pool.record_unit, pool.records) if r.dataset == CANARY_DATASET}
    return [pool.units[u] for u in sorted(canary)]


def _one_run(cfg, target: Path, pool: Pool, labels, split, settings: AuditSettings):
    members, flipped = set(split.members), set(split.mislabelled)
    extra = set(_canary_units(pool))
    if extra:  # extra patients, each included or not; scored on the random label each carries
        is_canary = np.array([u in extra for u in pool.units])
        included = is_canary & np.array([u in members for u in pool.units])
        canary_label = labels
    else:
        is_canary = np.array([(u not in members) or (u in flipped) for u in pool.units])
        included = np.array([u in flipped for u in pool.units])
        trained_label = np.where(included[pool.record_unit], 1 - labels, labels)
        # A canary is scored on the label it was (or would have been) trained with: the wrong one.
        canary_label = np.where(is_canary[pool.record_unit], 1 - labels, trained_label)
    logits = pool_logits(cfg, [target], pool.records)
    if extra:
        # Out of distribution, the model leans one way on most canaries, members or not, and each
        # canary's random label then decides its score more than memorisation does. Centring the
        # logit difference on the canaries' median removes that lean. The median is a function of
        # the released model and the canary set, not of who was included, so the guesses stay a
        # valid adversary's for Steinke et al.'s bound.
        own = is_canary[pool.record_unit]
        lean = float(np.median(logits[0, own, :, 1] - logits[0, own, :, 0]))
        logits = logits.copy()
        logits[..., 1] -= lean
    sig = margins(logits, canary_label)[0]
    scores = unit_scores(log_sigmoid(sig).mean(1), pool.record_unit, len(pool.units))[is_canary]
    inc = included[is_canary]
    m = len(scores)
    grid = one_run.k_grid(m)
    eps, k, guesses, correct = one_run.best_bound(scores, inc, grid, delta=_delta(cfg),
                                                  confidence=settings.confidence, two_sided=True)
    bound = OneRunBound(canaries=m, included=int(inc.sum()), k_grid=grid, guesses=guesses, correct=correct,
                        two_sided=True)
    return [_result("one-run", scores, inc, eps, bound, settings)], len(members)


def _delta(cfg: TrainConfig) -> float:
    """The δ the bounds are stated at: the recipe's, or (non-private) the default."""
    from dpmammo.privacy.config import DEFAULT_DELTA

    return cfg.privacy.delta if cfg.privacy is not None else DEFAULT_DELTA


def _result(name: str, scores: np.ndarray, is_member: np.ndarray, eps: float, bound, settings: AuditSettings):
    return attack_result(name, scores, is_member, eps, bound, confidence=settings.confidence, seed=settings.seed)


def _notes(method: str, unit: str, *, extra: Optional[str] = None) -> list[str]:
    notes = [f"membership is per {unit}: a {unit}'s score is the mean over its patches and flip views",
             "intervals: percentile bootstrap over units; the ε bound: Clopper–Pearson for the top-k units, k fixed on a "
             "calibration model" if method != "one-run" else
             "ε bound: Steinke, Nasr & Jagielski (2023), the best k of guessing the top k in and the bottom k out "
             "(Bonferroni over the k grid)",
             "the target trains on about half of the private pool, so its noise is calibrated for that pool "
             "size; its promise is the same ε per unit"]
    if method == "one-run" and extra:
        notes[2] = ("the target trains on every private unit and about half of the canaries, so its noise is "
                    "calibrated for that pool size; its promise is the same ε per unit")
        # `extra` is the settings' kind; scoring finished runs with other settings names no kind
        image = {"phantom": "one phantom patch",
                 "procedural": f"one procedural image ({', '.join(PROCEDURAL_CANARY_KINDS)} in turn)"}.get(
                     extra, "one generated image")
        notes.append(f"canaries: extra {unit}s of {image} each, as many copies as the audit's canary_patches "
                     f"({CANARY_DATASET}, a random process, out of distribution), with a label drawn independently of "
                     "its look, each included with probability 1/2 and scored on that label after centring the logit "
                     "difference on the canaries' median (the model's lean on such images, members or not); all "
                     "private units are always members")
    elif method == "one-run":
        notes.append("canaries: private units trained with the other label, each included with probability 1/2; "
                     "all other units are always members")
    return notes


class _ModelProgress:
    """A rich bar over the audit's models on a terminal, one plain line per model otherwise."""

    def __init__(self, mode: ProgressMode, total: int):
        self.mode, self.total, self.done = mode, total, 0
        self.bar = StepProgress(enabled=mode == "bar")

    def __enter__(self):
        self.bar.__enter__()
        self.task = self.bar.add_task("audit models", total=self.total)
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def __call__(self, role: str, status: str, seconds: float) -> None:
        self.done += 1
        self.bar.update(self.task, advance=1, description=f"audit models: {role} {status}")
        if self.mode == "lines":
            print(f"audit: model {self.done}/{self.total} {role} {status}"
                  + (f" in {seconds:.1f} s" if status == "trained" else ""), file=sys.stderr, flush=True)
