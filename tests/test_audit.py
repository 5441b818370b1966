"""Membership-inference audits: the bounds against independent computations, leakage measured on
phantoms (a non-private over-fitted model leaks, a DP one at ε = 1 never beyond its promise), the
refusal to score models of unknown membership, and the study's audit block in report.html."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score, roc_curve

from dpmammo.audit import AuditSettings, audit_recipe, audit_runs, read_audit
from dpmammo.audit import one_run, stats
from dpmammo.config import parse_config
from dpmammo.errors import DpMammoError
from dpmammo.train import TrainConfig, fit


# --- statistics, against independent routes -------------------------------------------------

@pytest.mark.parametrize("tp,n_in,fp,n_out,delta", [(600, 1000, 10, 1000, 1e-5), (90, 100, 0, 100, 1e-4),
                                                    (45, 289, 3, 289, 1e-4), (5, 50, 4, 60, 0.0)])
def test_epsilon_lower_bound_matches_scipy_binomtest_clopper_pearson(tp, n_in, fp, n_out, delta):
    """ε ≥ log((TPR_low − δ)/FPR_high), the ends of exact 95% intervals from scipy's binomtest
    (its own Clopper–Pearson code, not ours)."""
    tpr_low = sps.binomtest(tp, n_in).proportion_ci(confidence_level=0.95, method="exact").low
    fpr_high = sps.binomtest(fp, n_out).proportion_ci(confidence_level=0.95, method="exact").high
    expected = max(0.0, math.log((tpr_low - delta) / fpr_high)) if tpr_low > delta else 0.0
    ours = stats.epsilon_from_counts(tp=tp, n_members=n_in, fp=fp, n_nonmembers=n_out, delta=delta)
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert stats.cp_interval(tp, n_in, 0.95) == pytest.approx(tuple(
        sps.binomtest(tp, n_in).proportion_ci(confidence_level=0.95, method="exact")), rel=1e-9, abs=1e-12)
    # (n, FPR, TPR) = (1000, 1%, 60%): a clear, finite bound; chance-level counts prove nothing.
    assert stats.epsilon_from_counts(tp=50, n_members=100, fp=50, n_nonmembers=100, delta=1e-5) == 0.0


def test_one_run_bound_matches_steinke_closed_form_and_naive_p_value():
    # δ = 0 and every guess right: p = q^r, so the bound is logit(α^(1/r)) (Steinke et al. 2023, §5).
    for r in (10, 50, 200):
        q = 0.05 ** (1 / r)
        assert one_run.epsilon_lower_bound(m=1000, guesses=r, correct=r, delta=0.0) == pytest.approx(
            math.log(q / (1 - q)), abs=1e-5)
    # The p-value with δ against the paper's Algorithm 2 written as a naive loop over pmf terms.
    for m, r, v, eps, delta in [(1000, 100, 80, 1.0, 1e-5), (200, 50, 40, 0.5, 1e-3), (64, 16, 15, 2.0, 1e-4)]:
        q = 1 / (1 + math.exp(-eps))
        beta = sps.binom.sf(v - 1, r, q)
        alpha, cum = 0.0, 0.0
        for i in range(1, v + 1):
            cum += sps.binom.pmf(v - i, r, q)
            alpha = max(alpha, cum / i)
        naive = min(1.0, beta + alpha * delta * 2 * m)
        assert one_run.p_value(m=m, guesses=r, correct=v, epsilon=eps, delta=delta) == pytest.approx(naive, rel=1e-9)
    # The bound is the ε where the p-value reaches 1 − confidence; chance-level guessing proves nothing.
    eps = one_run.epsilon_lower_bound(m=1000, guesses=100, correct=80, delta=1e-5)
    assert one_run.p_value(m=1000, guesses=100, correct=80, epsilon=eps, delta=1e-5) == pytest.approx(0.05, abs=1e-4)
    assert one_run.epsilon_lower_bound(m=1000, guesses=100, correct=50, delta=1e-5) == 0.0


def test_two_sided_guesses_count_low_scores_as_out_and_prove_more():
    """Guessing "out" for the lowest scores as well as "in" for the highest (the one-run audits' game)
    uses the evidence of low scores: on members shifted by 1.5 spreads it proves more than guessing
    "in" alone, in each of 5 draws. The k grid never asks for more guesses than canaries, odd m too."""
    toy = np.array([3.0, 2.0, 1.0, 0.0])
    assert one_run.guesses_from_scores(toy, np.array([True, False, True, False]), 1, 1) == (2, 2)
    assert one_run.guesses_from_scores(toy, np.array([False, True, True, False]), 2, 2) == (4, 2)
    assert one_run.k_grid(500) == [5, 10, 25, 50, 100, 175, 250] and one_run.k_grid(127)[-1] == 63
    assert all(2 * k <= m for m in range(2, 400) for k in one_run.k_grid(m))
    for seed in range(5):
        rng = np.random.default_rng(seed)
        included = rng.random(500) < 0.5
        scores = rng.normal(size=500) + 1.5 * included
        one_sided = one_run.best_bound(scores, included, [25, 50, 100, 250, 500], delta=1e-4)[0]
        two_sided, k, guesses, correct = one_run.best_bound(scores, included, one_run.k_grid(500), delta=1e-4,
                                                            two_sided=True)
        assert guesses == 2 * k and two_sided > one_sided + 0.15, (seed, one_sided, two_sided)


def test_auc_and_tpr_at_fpr_match_sklearn():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=500), 1)  # ties on purpose
    member = rng.random(500) < 0.5
    scores[member] += 0.7
    assert stats.auc(scores, member) == pytest.approx(roc_auc_score(member, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(member, scores)
    for f in (0.0, 0.01, 0.1, 0.5):
        assert stats.tpr_at_fpr(scores, member, f) == pytest.approx(tpr[fpr <= f + 1e-12].max(), abs=1e-12)


# --- audits of phantom recipes -------------------------------------------------------------

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a loaded 2-core machine two threads
    per process made one audit model's training 7× slower (14.5 s vs 2.0 s, measured)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from dpmammo.data.phantoms import make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("audit-phantoms"), n=64, seed=3, size=32)


def recipe(root, *, privacy=None, head=True, epochs=100, batch_size=8) -> TrainConfig:
    """Over-fitting on purpose: no augmentation, small batches, many steps. Head-only on the cached
    features of a frozen (random) cnn-small backbone, or the whole tiny cnn-small."""
    return parse_config(TrainConfig, {
        "data": {"root": str(root), "train": ["phantom/train"], "val": "phantom/val"},
        "model": {"name": "cnn-small", "input_size": 32, "width": 64 if head else 8, "freeze_backbone": head},
        "optim": {"lr": 5e-2 if head else 1e-2},
        "train": {"epochs": epochs, "batch_size": batch_size, "select": "last", "augment": "none", "device": "cpu"},
        "privacy": privacy}, "test recipe")


def test_non_private_overfitted_model_leaks(phantoms, tmp_path, monkeypatch):
    rec = audit_recipe(recipe(phantoms), tmp_path / "lira", AuditSettings(method="lira", models=8), progress="off")
    primary = next(a for a in rec.attacks if a.attack == rec.primary)
    assert rec.primary == "lira-online" and rec.reference_models == 8 and rec.units == 64 and rec.target_members == 32
    assert primary.auc.value >= 0.7 and rec.measured_epsilon > 0.3
    assert rec.promised.guarantee == "none" and rec.stage_epsilon is None
    assert {a.attack for a in rec.attacks} == {"lira-online", "lira-offline", "loss"}
    on_disk = json.loads((tmp_path / "lira" / "audit.json").read_text())
    assert on_disk["measured_epsilon"] == rec.measured_epsilon and (tmp_path / "lira" / "roc.png").stat().st_size > 0
    # RMIA on the same models (scoring only): weaker than LiRA here, still well above chance.
    models = tmp_path / "lira" / "models"
    rmia = audit_runs(models / "target", sorted(models.glob("reference-*")), tmp_path / "rmia",
                      AuditSettings(method="rmia", models=8))
    assert rmia.primary == "rmia" and rmia.attacks[0].auc.value > 0.6 and rmia.measured_epsilon >= 0.0
    # A new attack: its own file (tests/toy_attack.py) and one registry line; the same models, scored again.
    from dpmammo.audit import attacks
    from toy_attack import margin_gap

    monkeypatch.setattr(attacks, "ATTACKS", dict(attacks.ATTACKS))  # the registration ends with this test
    attacks.register_attack("margin-gap", margin_gap, reported_by=("lira",))
    toy = audit_runs(models / "target", sorted(models.glob("reference-*")), tmp_path / "toy",
                     AuditSettings(method="lira", models=8))
    assert [a.attack for a in toy.attacks] == ["lira-online", "lira-offline", "loss", "margin-gap"]
    gap = next(a for a in toy.attacks if a.attack == "margin-gap")
    assert gap.auc.value >= 0.6 and toy.primary == "lira-online"


def test_dp_model_at_epsilon_1_never_measured_above_its_promise(phantoms, tmp_path):
    dp = {"target_epsilon": 1.0}
    rec = audit_recipe(recipe(phantoms, privacy=dp, epochs=30), tmp_path / "lira",
                       AuditSettings(method="lira", models=8),
                       progress="off")
    assert rec.promised.guarantee == "dp" and rec.promised.unit == "patient" and rec.promised.epsilon <= 1.0
    assert all(a.epsilon_lower_bound <= 1.0 for a in rec.attacks), [a.epsilon_lower_bound for a in rec.attacks]
    one = audit_recipe(recipe(phantoms, privacy=dp, head=False, epochs=10), tmp_path / "one",
                       AuditSettings(method="one-run", canaries=32), progress="off")
    assert one.promised.guarantee == "dp" and one.measured_epsilon <= 1.0
    assert one.attacks[0].bound.canaries == 32 and one.target_members == 32 + one.attacks[0].bound.included


def test_dp_audit_models_keep_the_recipe_sampling_rate(phantoms, tmp_path):
    """On half the pool a DP model draws half the recipe's batch, so it keeps the recipe's q (and σ,
    steps): a recipe of full batches (all 64 patients a step, q = 1) is audited, not refused for a
    batch larger than the 32 patients a model holds."""
    from dpmammo.audit.models import read_split
    from dpmammo.privacy import read_privacy

    # σ_N = 2 on the unit count (the default 20 would swamp 32 patients), paid for by a larger ε
    cfg = recipe(phantoms, privacy={"target_epsilon": 8.0, "unit_count_noise": 2.0}, epochs=3, batch_size=64)
    rec = audit_recipe(cfg, tmp_path / "lira", AuditSettings(method="lira", models=4), progress="off")
    assert rec.promised.guarantee == "dp" and rec.units == 64
    runs = sorted((tmp_path / "lira" / "models").iterdir())
    assert len(runs) == 5
    for run in runs:
        model_cfg, split = read_split(run)
        assert len(split.members) == 32 and model_cfg.train.batch_size == 32
        own = read_privacy(run / "privacy.json").own
        assert own.sample_rate > 0.8 and own.steps <= 4  # q ≈ 1 (32 of a count of 32 ± 2): 3 epochs, ~3 steps


def test_a_symmetrised_model_is_audited_on_one_view(phantoms, tmp_path):
    """A model whose features are the same in every flip (`model.symmetrize`) is scored on view 0
    alone, from the one-view features its training cached: its 4 flip views would repeat the same
    logits at 4 × 8 transforms each. The attack still separates over-fitted members."""
    from dpmammo.audit.models import load_pool, pool_logits
    from dpmammo.train import features as fc
    from dpmammo.train.build import initial_model

    cfg = parse_config(TrainConfig, {
        "data": {"root": str(phantoms), "train": ["phantom/train"], "val": "phantom/val"},
        "model": {"name": "scatter", "input_size": 32, "pool": 2, "symmetrize": "dihedral"},
        "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
        "train": {"epochs": 100, "batch_size": 8, "select": "last", "augment": "none", "device": "cpu"}}, "t")
    rec = audit_recipe(cfg, tmp_path / "lira", AuditSettings(method="lira", models=4), progress="off")
    assert rec.reference_models == 4 and rec.units == 64
    pool = load_pool(cfg, "patient")
    logits = pool_logits(cfg, [tmp_path / "lira" / "models" / "target"], pool.records)
    assert logits.shape == (1, len(pool.records), 1, 2)
    assert fc.cache_path(initial_model(cfg), pool.records, 1).is_file()  # the training's features, reused
    assert not fc.cache_path(initial_model(cfg), pool.records, 4).is_file()
    assert next(a for a in rec.attacks if a.attack == rec.primary).auc.value > 0.6
    # The reference models' features came from one pass over the pool (FeaturePrimer): each model's
    # subset is written under fit's cache key while it trains and removed after; a head is scored from them
    # as pool_logits scores it.
    from dpmammo.audit.models import FeaturePrimer, read_split
    from dpmammo.train.members import apply_audit_split

    primer = FeaturePrimer(cfg, initial_model(cfg))
    _, split = read_split(tmp_path / "lira" / "models" / "reference-00")
    subset = fc.cache_path(primer.model, apply_audit_split(pool.records, split), 1)
    assert not subset.exists()
    with primer.primed(split):
        assert subset.is_file()
    assert not subset.exists()
    np.testing.assert_allclose(primer.head_logits(tmp_path / "lira" / "models" / "target", pool.records, 1),
                               logits[0], atol=1e-5)
    with pytest.raises(DpMammoError, match="4 views asked of features computed in 1"):
        primer.head_logits(tmp_path / "lira" / "models" / "target", pool.records, 4)


def test_one_run_with_phantom_canaries_sees_a_non_private_model_memorise(phantoms, tmp_path, monkeypatch):
    """One-run with 128 phantom canaries (2 copies of one patch each) added as extra patients with
    random labels: every private patient trains, about half the canaries do; a non-private model
    that memorises them is caught (here the canaries are in distribution, as the private set is
    phantoms too: AUC ≥ 0.62 and a bound above 0), the canary folder is the audit's own and refused
    when foreign, and a DP model of the same recipe stays below its promise."""
    settings = AuditSettings(method="one-run", canaries=128, canary_kind="phantom", canary_patches=2)
    sides, best_bound = [], one_run.best_bound
    monkeypatch.setattr(one_run, "best_bound", lambda *a, **kw: sides.append(kw["two_sided"]) or best_bound(*a, **kw))
    rec = audit_recipe(recipe(phantoms), tmp_path / "ph", settings, progress="off")
    monkeypatch.undo()
    assert sides == [True]  # the black-box audit guesses the bottom k "out" too
    a = rec.attacks[0]
    assert a.bound.canaries == 128 and rec.units == 64 + 128 and rec.target_members == 64 + a.bound.included
    assert a.bound.two_sided and a.bound.guesses // 2 in a.bound.k_grid and a.bound.k_grid == one_run.k_grid(128)
    assert 44 < a.bound.included < 84 and rec.promised.guarantee == "none"
    assert a.auc.value >= 0.62 and rec.measured_epsilon > 0, (a.auc.value, rec.measured_epsilon)
    assert any("phantom" in n for n in rec.notes)
    files = sorted((tmp_path / "ph" / "canaries").rglob("*.png"))
    assert len(files) == 256 and 64 < sum("is_benign_false" in str(f.parent) for f in files) < 192
    (tmp_path / "other" / "canaries").mkdir(parents=True)
    (tmp_path / "other" / "canaries" / "stray.txt").write_text("not a canary")
    with pytest.raises(DpMammoError, match="other files than this audit's 128 phantom canaries"):
        audit_recipe(recipe(phantoms, epochs=1), tmp_path / "other", settings, progress="off")
    dp = audit_recipe(recipe(phantoms, privacy={"target_epsilon": 1.0}, head=False, epochs=10), tmp_path / "dp",
                      settings, progress="off")
    assert dp.promised.guarantee == "dp" and dp.measured_epsilon <= dp.promised.epsilon <= 1.0
    with pytest.raises(DpMammoError, match="canary_kind phantom is a one-run audit's"):
        audit_recipe(recipe(phantoms), tmp_path / "lira", AuditSettings(method="lira", canary_kind="phantom"),
                     progress="off")
    # `auto` (a study's audit block) uses the canaries where it picks one-run, and LiRA without them
    # on a head-only recipe.
    auto = AuditSettings(method="auto", models=4, canaries=16, canary_kind="phantom", canary_patches=2)
    head = audit_recipe(recipe(phantoms, epochs=2), tmp_path / "auto-head", auto, progress="off")
    assert head.method == "lira" and head.units == 64 and not (tmp_path / "auto-head" / "canaries").exists()
    whole = audit_recipe(recipe(phantoms, head=False, epochs=1), tmp_path / "auto-whole", auto, progress="off")
    assert whole.method == "one-run" and whole.units == 64 + 16 and whole.attacks[0].bound.canaries == 16
    assert len(list((tmp_path / "auto-whole" / "canaries").rglob("*.png"))) == 32


def test_procedural_canaries_are_diverse_repeatable_and_memorised_by_a_whole_cnn(phantoms, tmp_path):
    """Procedural canaries: the same seed writes the same bytes, another seed other images, and
    no two canaries share an image. A tiny whole cnn-small (width 8)
    trained without privacy on the phantom set plus 96 canaries of 4 copies each memorises them:
    AUC ≥ 0.7 with its interval above chance (0.76 when written; at this size the bound stays
    small, the real recipe's is in benchmarks/README.md)."""
    from PIL import Image

    from dpmammo.audit.splits import CANARY_MANIFEST, PROCEDURAL_CANARY_KINDS, write_extra_canaries

    def pixels(folder):
        return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}

    a = pixels(write_extra_canaries(tmp_path / "a", 12, seed=1, size=32, patches=2, kind="procedural"))
    b = pixels(write_extra_canaries(tmp_path / "b", 12, seed=1, size=32, patches=2, kind="procedural"))
    c = pixels(write_extra_canaries(tmp_path / "c", 12, seed=2, size=32, patches=2, kind="procedural"))
    assert len(a) == 24 and a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    distinct = {v.tobytes() for v in a.values()}
    assert len(distinct) == 12  # two copies of each canary's one image
    assert not distinct & {v.tobytes() for v in c.values()}
    assert json.loads((tmp_path / "a" / CANARY_MANIFEST).read_text())["kind"] == "procedural"
    assert len(PROCEDURAL_CANARY_KINDS) == 3
    with pytest.raises(DpMammoError, match=r"kind procedural \(this audit: phantom\)"):
        write_extra_canaries(tmp_path / "a", 12, seed=1, size=32, patches=2)

    settings = AuditSettings(method="one-run", canaries=96, canary_kind="procedural", canary_patches=4)
    rec = audit_recipe(recipe(phantoms, head=False, epochs=30), tmp_path / "cnn", settings, progress="off")
    top = rec.attacks[0]
    assert rec.units == 64 + 96 and rec.promised.guarantee == "none"
    assert any("procedural image" in n for n in rec.notes)
    assert top.auc.value >= 0.7 and top.auc.ci_low > 0.5, top.auc


def test_phantom_canaries_are_reused_only_when_made_alike(phantoms, tmp_path):
    """The canaries folder of a one-run audit says what made it; a rerun into the same --out reuses
    it only with the same kind, count, copies, size and seed, and otherwise refuses, naming what
    differs, before anything is trained or touched."""
    from PIL import Image

    from dpmammo.audit.splits import CANARY_MANIFEST, write_extra_canaries

    folder = write_extra_canaries(tmp_path / "out" / "canaries", 8, seed=5, size=32, patches=2)
    pngs = sorted(folder.rglob("*.png"))
    assert len(pngs) == 16 and {Image.open(p).size for p in pngs} == {(32, 32)}
    assert json.loads((folder / CANARY_MANIFEST).read_text()) == {
        "kind": "phantom", "count": 8, "patches_per_canary": 2, "size": 32, "seed": 5}
    before = {p: p.read_bytes() for p in pngs}
    assert write_extra_canaries(folder, 8, seed=5, size=32, patches=2) == folder  # same settings: reused
    with pytest.raises(DpMammoError, match=r"size 32 \(this audit: 48\); the audit does not replace them"):
        write_extra_canaries(folder, 8, seed=5, size=48, patches=2)
    with pytest.raises(DpMammoError, match=r"count 8 \(this audit: 9\), patches_per_canary 2 \(this audit: 1\);"):
        write_extra_canaries(folder, 9, seed=5, size=32, patches=1)
    with pytest.raises(DpMammoError, match=r"seed 5 \(this audit: 6\);"):
        write_extra_canaries(folder, 8, seed=6, size=32, patches=2)
    assert {p: p.read_bytes() for p in sorted(folder.rglob("*.png"))} == before  # nothing replaced
    # Through the audit: the recipe's model.input_size is the canaries' size.
    settings = AuditSettings(method="one-run", canaries=8, canary_kind="phantom", canary_patches=2, seed=5)
    bigger = recipe(phantoms, epochs=1)
    bigger = bigger.model_copy(update={"model": bigger.model.model_copy(update={"input_size": 48})})
    with pytest.raises(DpMammoError, match=r"size 32 \(this audit: 48\)"):
        audit_recipe(bigger, tmp_path / "out", settings, progress="off")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["canaries"]
    # A folder without its manifest (or with other files) is not reused either.
    (folder / CANARY_MANIFEST).unlink()
    with pytest.raises(DpMammoError, match=f"other files than this audit's 8 phantom canaries .* {CANARY_MANIFEST}"):
        write_extra_canaries(folder, 8, seed=5, size=32, patches=2)


def test_audit_refuses_models_of_unknown_membership(phantoms, tmp_path):
    plain = tmp_path / "plain"
    fit(recipe(phantoms, epochs=1), plain, progress=False)
    with pytest.raises(DpMammoError, match="not trained on a known member split"):
        audit_runs(plain, [], tmp_path / "audit", AuditSettings(method="one-run"))
    assert not (tmp_path / "audit" / "audit.json").exists()
    # A split naming units the data does not have is refused before training, not silently shrunk.
    cfg = recipe(phantoms, epochs=1).model_dump(mode="json")
    cfg["data"]["audit_split"] = {"unit": "patient", "members": ["nobody"], "seed": 0, "role": "target"}
    with pytest.raises(DpMammoError, match="not in the private training sets"):
        fit(parse_config(TrainConfig, cfg, "t"), tmp_path / "bad", progress=False)
    # The CLI: a finished audit is never overwritten; bad options are one line, exit 2.
    cfg_file = tmp_path / "recipe.yaml"
    import yaml

    cfg_file.write_text(yaml.safe_dump(recipe(phantoms, epochs=1).model_dump(mode="json")))
    out = tmp_path / "cli"
    out.mkdir()
    (out / "audit.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "dpmammo.cli", "audit", str(cfg_file), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "already holds a finished audit" in proc.stderr
    assert "Traceback" not in proc.stderr and (out / "audit.json").read_text() == "{}"
    with pytest.raises(DpMammoError, match="must be even"):
        parse_config(AuditSettings, {"models": 7}, "audit options")


def test_quick_audit_preset_is_quick_plus_an_audit():
    from dpmammo.study import load_study

    quick, audited = load_study(preset="quick"), load_study(preset="quick-audit")
    assert quick.audit is None and audited.audit is not None and audited.audit.method == "auto"
    a = audited.audit  # full-model conditions: canaries built to be memorised (docs/audits.md)
    assert (a.canaries, a.canary_kind, a.canary_patches) == (500, "procedural", 8)
    assert quick.model_dump(exclude={"name", "audit"}) == audited.model_dump(exclude={"name", "audit"})


def test_study_audit_block_writes_promised_vs_measured_into_the_report(tmp_path):
    from dpmammo.data.phantoms import make_phantoms
    from dpmammo.report import build_report
    from dpmammo.study import StudyConfig, run_study

    data = make_phantoms(tmp_path / "data", n=64, seed=5, size=32)
    cfg = parse_config(StudyConfig, {
        "name": "tiny-audit", "data_root": str(data), "train_set": "phantom/train", "val_set": "phantom/val",
        "test_sets": ["phantom/test"], "synthetic": str(tmp_path / "unused"), "conditions": ["real"],
        "epsilons": [1, "inf"], "model": {"name": "cnn-small", "input_size": 32, "width": 8},
        "optim": {"lr": 1e-2}, "train": {"epochs": 2, "batch_size": 8, "device": "cpu"},
        "privacy": {"delta": 1e-3}, "resources": {"num_cpus": 1},
        "audit": {"method": "lira", "models": 4}}, "t")
    result = run_study(cfg, tmp_path / "study", progress=False)
    assert not result.failed
    study = tmp_path / "study"
    audits = json.loads((study / "audits.json").read_text())["audits"]
    assert [(a["epsilon"], a["status"]) for a in audits] == [("1", "done"), ("∞", "done")]
    dp = read_audit(study / "audit" / "real" / "eps1" / "seed0" / "audit.json")
    assert dp.promised.guarantee == "dp" and dp.measured_epsilon <= dp.promised.epsilon
    build_report(study)
    html = (study / "report.html").read_text()
    assert "Promised ε vs measured ε lower bound" in html and '<table id="audit">' in html
    assert f"{dp.measured_epsilon:.2f}/patient" in html and "non-private" in html
    assert html.count("data:image/png;base64,") == 3  # privacy-utility, ROC, promised vs measured
