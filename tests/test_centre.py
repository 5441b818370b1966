"""`train.centre_features`: a head's cached inputs centred on their DP training mean, released once,
counted in the stage, folded into the released head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score
from torch import nn

from dpmammo.errors import DpMammoError
from dpmammo.privacy import read_privacy
from dpmammo.privacy.accounting import calibrate_noise
from dpmammo.privacy.ledger import ReleaseSpend
from dpmammo.train import fit
from dpmammo.train import centre as centre_module
from dpmammo.train.centre import clipped_unit_sum, fold_into_head
from tests.conftest import stopped_after_first_checkpoint
from tests.test_privacy import dp_accounting_epsilon
from tests.test_train import phantom_config

CENTRE = {"clip": 3.0, "noise_multiplier": 4.0}


def test_a_patient_with_14_patches_in_4_views_moves_the_clipped_sum_by_at_most_the_clip():
    """The release's sensitivity: adding or removing one unit, whatever its patches and views hold,
    moves the sum by ≤ clip (and by exactly clip when its mean is large: the bound is tight)."""
    gen = torch.Generator().manual_seed(0)
    others = [torch.arange(i * 3, i * 3 + 3) for i in range(20)]  # 20 patients of 3 patches
    feats = torch.randn(60 + 14, 4, 16, generator=gen) * 5 + 2
    patient = torch.arange(60, 74)  # 14 patches, 4 views each
    feats[patient] = torch.randn(14, 4, 16, generator=gen) * 100 + 50
    without = clipped_unit_sum(feats, others, clip=3.0)
    with_it = clipped_unit_sum(feats, [*others, patient], clip=3.0)
    assert (with_it - without).norm().item() == pytest.approx(3.0, rel=1e-9)
    small = feats.clone()
    small[patient] = small[patient] * 1e-3  # mean norm well under the clip: kept as it is
    moved = (clipped_unit_sum(small, [*others, patient], clip=3.0) - without).norm().item()
    assert moved == pytest.approx(small[patient].double().mean((0, 1)).norm().item(), rel=1e-9) and moved < 3.0


def test_the_folded_head_scores_raw_features_as_the_trained_head_scored_centred_ones():
    head = nn.Linear(16, 2)
    x, c = torch.randn(50, 16) * 4 + 3, torch.randn(16) * 3
    before = head(x - c).detach()
    fold_into_head(head, c)
    torch.testing.assert_close(head(x).detach(), before, rtol=1e-5, atol=1e-5)
    with pytest.raises(DpMammoError, match="folds the centre into a linear head"):
        fold_into_head(nn.Sequential(nn.Linear(16, 2)), c)


def scatter_head_config(root, **over):
    return phantom_config(root, model__={"name": "scatter", "input_size": 32, "J": 2, "pool": 2},
                          train__epochs=3, train__batch_size=100, optim__lr=0.5, train__augment="none",
                          train__select="last", train__checkpoint_every_s=0, **over)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_a_dp_run_releases_the_centre_once_counts_it_and_releases_a_head_that_scores_raw_features(phantom_root,
                                                                                                   tmp_path, accountant):
    private = {"target_epsilon": 4.0, "accountant": accountant}  # secret noise: a guaranteed stage lists its events
    m = fit(scatter_head_config(phantom_root, privacy__=private, train__centre_features=CENTRE), tmp_path / "centred",
            progress=False)
    own = read_privacy(tmp_path / "centred" / "privacy.json").own
    assert own.releases == [ReleaseSpend(what="feature centre", noise_multiplier=4.0, sensitivity=3.0)]
    count, centre, steps = own.events()
    assert (count.sensitivity, centre.sensitivity, centre.noise_multiplier) == (1.0, 3.0, 4.0)
    # The stage as a whole meets its target: its steps took more noise than they would alone...
    alone = calibrate_noise(target_epsilon=4.0, delta=own.delta, sample_rate=own.sample_rate, steps=own.steps,
                            accountant=accountant, prior=[count])
    assert own.noise_multiplier == calibrate_noise(target_epsilon=4.0, delta=own.delta, sample_rate=own.sample_rate,
                                                   steps=own.steps, accountant=accountant, prior=[count, centre])
    assert own.noise_multiplier > alone * 1.01
    # the ε logged each epoch includes it too: the last epoch's is the stage's
    assert m["history"][-1]["epsilon"] == pytest.approx(own.epsilon, rel=2e-3)
    assert 3.95 <= own.epsilon <= 4.0
    # ...and an independent accountant agrees on the composition of the three (RDP; PRV is checked
    # against dp-accounting's PLD accountant in test_privacy.py on the same events).
    if accountant == "rdp":
        theirs = dp_accounting_epsilon(own.noise_multiplier, own.sample_rate, own.steps, own.delta, count_noise=20.0,
                                       releases=(4.0,))
        assert own.epsilon == pytest.approx(theirs, rel=0.01)
    assert "features centred on their training mean (a Gaussian release, sigma=4 clip=3" in \
        (tmp_path / "centred" / "log.txt").read_text()
    # The released head, on the raw cached features, gives the validation AUROC the run scored on centred ones.
    from dpmammo.data.images import load_labels
    from dpmammo.data.sets import load_set
    from dpmammo.train import features as fc
    from dpmammo.train.saved import load_run_model

    cfg, model = load_run_model(tmp_path / "centred")
    model.freeze_backbone()
    val = load_set(phantom_root, "phantom/val")
    from dpmammo.data.images import load_images

    feats = fc.cached_features(model, val, load_images(val, model.input_size), 1)
    p = fc.head_proba(model, feats)
    # Equal up to float32 rounding: W·x + (b − W·c) and W·(x − c) + b differ by ~1e-7, which can swap a
    # near-tied positive-negative pair (each swap moves the AUROC by 1 / (positives · negatives)).
    labels = load_labels(val).numpy()
    one_pair = 1 / (int(labels.sum()) * int((1 - labels).sum()))
    assert roc_auc_score(labels, p) == pytest.approx(m["val"]["auroc"], abs=2 * one_pair + 1e-12)
    assert set(load_file(str(tmp_path / "centred" / "model.safetensors"))) == {"head.weight", "head.bias"}


def test_an_interrupted_run_resumes_with_the_centre_it_released(phantom_root, tmp_path, monkeypatch):
    """With secret noise: the centre is released once, kept in the checkpoint (it is released data, not
    a secret), and a resume uses it instead of releasing a second one with its fresh key."""
    cfg = scatter_head_config(phantom_root, privacy__={"target_epsilon": 4.0}, train__centre_features=CENTRE)
    calls = []
    real = centre_module.dp_feature_centre
    monkeypatch.setattr("dpmammo.train.loop.dp_feature_centre", lambda *a, **k: calls.append(1) or real(*a, **k))
    with stopped_after_first_checkpoint(monkeypatch):
        fit(cfg, tmp_path / "run", progress=False)
    saved = np.array(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["state"]["centre"])
    assert len(calls) == 1 and saved.shape == (81 * 2 * 2,)  # J = 2, L = 8: 81 channels, pooled to 2²
    fit(cfg, tmp_path / "run", progress=False)
    assert len(calls) == 1  # not released again
    own = read_privacy(tmp_path / "run" / "privacy.json").own
    assert own.guarantee == "dp" and len(own.releases) == 1 and own.epsilon <= 4.0
    assert "features centred on their training mean" in (tmp_path / "run" / "log.txt").read_text()


def test_a_non_private_run_centres_on_the_exact_mean_and_records_no_release(phantom_root, tmp_path):
    fit(scatter_head_config(phantom_root, train__centre_features=CENTRE), tmp_path / "run", progress=False)
    rec = read_privacy(tmp_path / "run" / "privacy.json")
    assert rec.own.releases == [] and rec.total.reason == "non-private"
    assert "(exact, no DP)" in (tmp_path / "run" / "log.txt").read_text()


def test_a_centre_that_takes_the_whole_target_is_refused_before_any_step(phantom_root, tmp_path):
    cfg = scatter_head_config(phantom_root, privacy__={"target_epsilon": 1.0},
                              train__centre_features={"clip": 3.0, "noise_multiplier": 0.5})
    with pytest.raises(DpMammoError, match=r"feature centre, with its noisy unit count\) already spend .* raise their "
                                           r"noise multiplier \(train.centre_features.noise_multiplier\)"):
        fit(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_centring_needs_a_head_on_cached_features(phantom_root):
    with pytest.raises(DpMammoError, match="centre_features centres a head's cached inputs"):
        phantom_config(phantom_root, train__centre_features=CENTRE)  # cnn-small: the whole model trains
    with pytest.raises(DpMammoError, match="centre_features centres a head's cached inputs"):
        scatter_head_config(phantom_root, train__centre_features=CENTRE, train__feature_cache=False)
    swin = {"name": "swin_t", "pretrained": False, "freeze_backbone": True}
    with pytest.raises(DpMammoError, match="folds the centre into a linear head: set model.head: linear"):
        phantom_config(phantom_root, model__=swin, train__centre_features=CENTRE)  # its default head is an MLP
    assert phantom_config(phantom_root, model__={**swin, "head": "linear"}, train__centre_features=CENTRE)


def test_a_gradient_canary_audit_of_a_centred_recipe_is_refused_before_anything_is_written(phantom_root, tmp_path):
    """The canary audit measures the DP-SGD steps; the centre's release before them is outside it."""
    from dpmammo.audit.config import AuditSettings
    from dpmammo.audit.whitebox import audit_gradient_canaries

    cfg = scatter_head_config(phantom_root, privacy__={"target_epsilon": 4.0}, train__centre_features=CENTRE)
    with pytest.raises(DpMammoError, match="train.centre_features: a gradient-canary audit measures the DP-SGD steps"):
        audit_gradient_canaries(cfg, tmp_path / "audit", AuditSettings(method="gradient-canary"))
    assert not (tmp_path / "audit").exists()


def test_a_study_sets_it_for_a_stages_dp_runs_only():
    from dpmammo.study import expand, load_study

    plan = expand(load_study(preset="quick", overrides=[
        "stages.real.dp.centre_features={clip: 40, noise_multiplier: 12}"]))
    dp_real = plan.runs["real/eps1/seed0"].config.train.centre_features
    assert (dp_real.clip, dp_real.noise_multiplier) == (40, 12)
    assert plan.runs["real/epsinf/seed0"].config.train.centre_features is None  # a `dp` block: DP runs only


def test_every_rank_of_a_training_over_several_processes_releases_the_same_centre():
    """Ranks share the stage's key and hold every unit's features, so each computes the one release
    (no rank's share of the batches enters it); another key gives other noise."""
    from dpmammo.privacy.sampling import PoissonUnits
    from dpmammo.privacy.secret import SecretKey
    from dpmammo.train.centre import dp_feature_centre
    from dpmammo.train.config import FeatureCentreConfig

    units = torch.arange(40).repeat_interleave(3)
    feats = torch.randn(120, 1, 8, generator=torch.Generator().manual_seed(1)) + 4
    cfg = FeatureCentreConfig(**CENTRE)
    key = SecretKey.fresh()
    centres = [dp_feature_centre(feats, PoissonUnits(units, 10, key, rate_units=41.0, shard=(r, 2)), cfg, "patient")[0]
               for r in range(2)]
    assert torch.equal(centres[0], centres[1])
    other, release = dp_feature_centre(feats, PoissonUnits(units, 10, SecretKey.fresh(), rate_units=41.0), cfg,
                                       "patient")
    assert not torch.equal(other, centres[0]) and release.sensitivity == 3.0
    # noise std σ_c·clip / N̂ per coordinate around the clipped mean sum / N̂
    exact = clipped_unit_sum(feats, [torch.arange(3 * u, 3 * u + 3) for u in range(40)], 3.0) / 41.0
    assert (other.double() - exact).abs().max().item() < 6 * 4.0 * 3.0 / 41.0
