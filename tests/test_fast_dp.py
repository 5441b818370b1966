"""Fast DP-SGD: cached features for frozen backbones, every grad-sample mode against a naive
per-example loop, Swin window attention made DP-trainable."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn

from dpmammo.data.images import apply_views
from dpmammo.data.phantoms import make_phantoms
from dpmammo.errors import DpMammoError
from dpmammo.models import create_model
from dpmammo.models.classifier import Classifier
from dpmammo.models.swin import SwinBackbone
from dpmammo.privacy import Batch, PoissonUnits, PrivacyConfig, SecretKey, make_private, read_privacy
from dpmammo.privacy.grad_samplers import DPWindowAttention, compute_linear_norm_sample_mixed, prepare_for_dp
from dpmammo.train import TrainConfig, fit
from dpmammo.train.loop import flip_views

MODES = ["hooks", "functorch", "ghost"]

# CI runs these on the CPU; `DPMAMMO_TEST_DEVICE=cuda` runs the same assertions on a GPU
# (benchmarks/gpu_check.sh). cuDNN's TF32 convolutions would miss the 1e-4 tolerances by design.
DEVICE = torch.device(os.environ.get("DPMAMMO_TEST_DEVICE", "cpu"))
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    return make_phantoms(tmp_path_factory.mktemp("phantoms"), n=40, seed=0, size=32)


def frozen_cnn_config(root, cache: bool, dp: bool) -> TrainConfig:
    data = {
        "data": {"root": str(root), "train": ["phantom/train"], "val": "phantom/val"},
        "model": {"name": "cnn-small", "input_size": 32, "width": 8, "freeze_backbone": True},
        "optim": {"lr": 0.05, "label_smoothing": 0.1},
        "train": {"epochs": 2, "batch_size": 10, "physical_batch_size": 4, "seed": 3, "select": "last",
                  "feature_cache": cache},
    }
    if dp:
        # Seeded noise (test-only) so that the cached and the uncached run can be compared.
        data["privacy"] = {"target_epsilon": 4.0, "delta": 1e-3, "max_grad_norm": 0.5, "seeded_noise_for_tests": True,
                           "unit_count_noise": 1.0}
    return TrainConfig.model_validate(data)


@pytest.mark.parametrize("dp", [False, True], ids=["non-private", "dp"])
def test_cached_features_train_the_same_head(phantom_root, tmp_path, monkeypatch, dp):
    monkeypatch.setenv("DPMAMMO_CACHE", str(tmp_path / "cache"))
    runs = {}
    for cache in (False, True):
        out = tmp_path / f"run-{cache}"
        fit(frozen_cnn_config(phantom_root, cache, dp), out, progress=False)
        runs[cache] = out
    plain, cached = (load_file(str(runs[c] / "model.safetensors")) for c in (False, True))
    assert plain.keys() == cached.keys()
    for key in plain:
        torch.testing.assert_close(cached[key], plain[key], atol=2e-5, rtol=1e-4, msg=key)
    # The head moved: the comparison is not between two untrained heads.
    torch.manual_seed(3)
    start = create_model("cnn-small", input_size=32, width=8).state_dict()
    assert (cached["head.weight"] - start["head.weight"]).abs().max() > 1e-3
    assert torch.equal(cached["backbone.1.0.weight"], start["backbone.1.0.weight"])
    m_plain = json.loads((runs[False] / "metrics.json").read_text())
    m_cached = json.loads((runs[True] / "metrics.json").read_text())
    assert m_cached["val"]["auroc"] == pytest.approx(m_plain["val"]["auroc"], abs=1e-6)
    # Train features (4 views) and val features (1 view) are on disk and reused by a later run.
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 2
    if not dp:
        fit(frozen_cnn_config(phantom_root, True, dp), tmp_path / "again", progress=False)
        assert (tmp_path / "again" / "log.txt").read_text().count("features: reused") == 2
    else:
        own = read_privacy(runs[True] / "privacy.json").own
        assert 0 < own.epsilon <= 4.0
        # epochs / q with q = 10 / N̂, N̂ the noisy count of the 40 phantom patients (σ_N = 1 here).
        assert own.steps == round(2 / own.sample_rate) and 35 < 10 / own.sample_rate < 45


@pytest.mark.parametrize("head", ["linear", "cnn"])
def test_dp_head_on_scatter_features_is_the_same_cached_or_not(phantom_root, tmp_path, head):
    """The parameter-free scatter backbone under make_private: uncached, the whole model goes to
    Opacus (the head alone trains); cached, the head trains on stored features. Same head, be it
    the linear one or the CNN on the coefficient maps."""
    # the CNN on maps of side 4 (2 after its max-pool), so that its GroupNorms see more than one number a group
    model = ({"name": "scatter", "input_size": 32, "pool": 2} if head == "linear" else
             {"name": "scatter", "input_size": 32, "pool": 4, "head": "cnn", "head_width": 8})
    heads = {}
    for cache in (False, True):
        cfg = TrainConfig.model_validate({**frozen_cnn_config(phantom_root, cache, dp=True).model_dump(), "model": model})
        fit(cfg, tmp_path / f"run-{cache}", progress=False)
        heads[cache] = load_file(str(tmp_path / f"run-{cache}" / "model.safetensors"))
    assert all(key.startswith("head.") for key in heads[True]) and set(heads[True]) == set(heads[False])
    assert len(heads[True]) == (2 if head == "linear" else 14)  # 3 convs, 3 GroupNorms, the last linear layer: 2 each
    for key in heads[True]:
        torch.testing.assert_close(heads[True][key], heads[False][key], atol=2e-5, rtol=1e-4, msg=key)
    torch.manual_seed(cfg.train.seed)
    start = create_model(cfg.model).state_dict()
    # the head moved (that gradients reach the CNN's first layer is tested in test_models)
    for key in ["head.weight"] if head == "linear" else ["head.13.weight", "head.1.weight"]:
        assert (heads[True][key] - start[key]).abs().max() > 1e-3, key


def test_test_flips_score_the_mean_logit_over_the_four_flips(phantom_root, tmp_path):
    """train.test_flips: a prediction is the softmax of the mean logits over the image's 4 flips,
    the same from images (predict_proba) and from cached features (head_proba), and what a run's
    validation AUROC was computed with, so that training selects and `evaluate` scores alike."""
    from sklearn.metrics import roc_auc_score

    from dpmammo.data.images import N_VIEWS, load_images, load_labels, to_float
    from dpmammo.data.sets import load_set
    from dpmammo.train.features import compute_features, head_proba
    from dpmammo.train.predict import predict_proba
    from dpmammo.train.saved import load_run_model

    torch.manual_seed(0)
    model = create_model("scatter", input_size=32, pool=2).eval()
    torch.nn.init.normal_(model.head.weight)  # the scatter head starts at zero: every probability ½
    val = load_set(phantom_root, "phantom/val")
    images = load_images(val, 32)
    with torch.no_grad():
        logits = torch.stack([model(to_float(apply_views(images, torch.full((len(images),), v))))
                              for v in range(N_VIEWS)]).mean(0)
    expected = torch.softmax(logits, dim=1)[:, 1].numpy()
    flipped = predict_proba(model, images, flips=True)
    np.testing.assert_allclose(flipped, expected, atol=1e-6)
    np.testing.assert_allclose(head_proba(model, compute_features(model, images, N_VIEWS), flips=True), flipped,
                               atol=1e-5)
    assert np.abs(predict_proba(model, images) - flipped).max() > 1e-3  # the features are not flip-invariant
    with pytest.raises(ValueError, match="all 4 views"):
        head_proba(model, compute_features(model, images, 1), flips=True)

    cfg = TrainConfig.model_validate({**frozen_cnn_config(phantom_root, True, dp=False).model_dump(),
                                      "model": {"name": "scatter", "input_size": 32, "pool": 2}})
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"test_flips": True})})
    metrics = fit(cfg, tmp_path / "run", progress=False)
    _, trained = load_run_model(tmp_path / "run")
    auroc = roc_auc_score(load_labels(val).numpy(),
                          head_proba(trained, compute_features(trained, images, N_VIEWS), flips=True))
    assert metrics["val"]["auroc"] == pytest.approx(auroc, abs=1e-9)
    # A release says so, for a program (release.json) and for a reader (the model card).
    from dpmammo.release import release_run

    assert release_run(tmp_path / "run", tmp_path / "release", allow_no_guarantee=True).test_flips is True
    assert json.loads((tmp_path / "release" / "release.json").read_text())["test_flips"] is True
    assert "mean logit over the patch's 4 flips" in (tmp_path / "release" / "MODEL_CARD.md").read_text()


def tiny_swin() -> nn.Module:
    """Two Swin stages: 14×14 tokens in 4 shifted 7×7 windows, then one 7×7 window."""
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=2, img_size=56,
                             embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=7, drop_path_rate=0.0)


def tiny_cnn() -> nn.Module:
    return create_model("cnn-small", input_size=32, width=8)


def tiny_ws_cnn() -> nn.Module:
    """cnn-small with weight-standardised convs: its per-sample gradients go through the standardisation."""
    return create_model("cnn-small", input_size=32, width=8, weight_standardization=True)


def tiny_head() -> nn.Module:
    """A head on cached features: linear layers only, so `auto` picks book-keeping."""
    return nn.Sequential(nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 2))


def tiny_scatter_cnn_head() -> nn.Module:
    """The scatter model's CNN head (ScatterCnnHead) on the flattened maps of 3 channels of side 4."""
    from dpmammo.models.scatter import ScatterCnnHead

    return ScatterCnnHead(3, 4, 8)


def tiny_token_head() -> nn.Module:
    """Linear layers on (B, T, F) token inputs, then a linear classifier on the flattened tokens."""
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Flatten(), nn.Linear(15, 2))


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


def per_example_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The naive reference: one backward pass per example."""
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        rows.append(flat_grad(model))
    return torch.stack(rows)


def per_sample_norms(dp) -> torch.Tensor:
    if dp.grad_sample_mode == "ghost":
        return dp.model.per_sample_gradient_norms
    if dp.grad_sample_mode == "bookkeeping":
        return dp.model.unit_gradient_norms
    return torch.stack([p.grad_sample.flatten(1).norm(dim=1) for p in dp.optimizer.params]).norm(dim=0)


def private(model, params, *, units: torch.Tensor, expected_units: int, mode: str, clip: float = 1.0,
            unit: str = "patch", target: float = 10.0, delta: float = 1e-5):
    """make_private over a Poisson sampler of `units` (one unit number per record)."""
    sampler = PoissonUnits(units, expected_units, SecretKey.for_tests(0))
    return make_private(model=model, optimizer=torch.optim.SGD(params, lr=1.0), sampler=sampler, epochs=1,
                        config=PrivacyConfig(target_epsilon=target, delta=delta, max_grad_norm=clip,
                                             grad_sample_mode=mode, unit=unit))


# Five samples of three patients (2 + 1 + 2 patches): patient-level clipping clips each patient's sum.
PATIENT_GROUPS = torch.tensor([0, 0, 1, 2, 2])


NETWORKS = {"cnn": (tiny_cnn, (5, 1, 32, 32)), "ws-cnn": (tiny_ws_cnn, (5, 1, 32, 32)),
            "swin": (tiny_swin, (5, 3, 56, 56)), "head": (tiny_head, (5, 12)),
            "scatter-cnn-head": (tiny_scatter_cnn_head, (5, 48)), "token-head": (tiny_token_head, (5, 3, 6))}
CASES = [(net, mode) for net in NETWORKS for mode in (*MODES, "bookkeeping")]


@pytest.mark.parametrize("unit", ["patch", "patient"])
@pytest.mark.parametrize("net,mode", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_per_sample_gradients_match_a_per_example_loop(net, mode, unit):
    build, shape = NETWORKS[net]
    torch.manual_seed(0)
    model = prepare_for_dp(build()).to(DEVICE)  # the reference runs the same (converted) function
    x, y = torch.rand(shape).to(DEVICE), torch.randint(0, 2, (shape[0],)).to(DEVICE)
    ref = per_example_grads(copy.deepcopy(model), x, y)
    groups = PATIENT_GROUPS if unit == "patient" else torch.arange(len(x))
    n_units = int(groups.max()) + 1
    ref_units = torch.zeros(n_units, ref.shape[1], device=DEVICE).index_add_(0, groups.to(DEVICE), ref)
    ref_norms = ref_units.norm(dim=1)
    clip = float(ref_norms.median())  # about half of the units get clipped
    clipped_mean = (ref_units * (clip / ref_norms[:, None]).clamp(max=1.0)).sum(0) / n_units

    params = [p for p in model.parameters() if p.requires_grad]
    before = torch.cat([p.detach().flatten() for p in params]).clone()
    dp = private(model, params, units=groups, expected_units=n_units, mode=mode, clip=clip, unit=unit)
    assert dp.grad_sample_mode == mode
    dp.optimizer.noise_multiplier = 0.0  # isolate clipping; noise is Opacus's own, tested there
    dp.model.train()
    norms = []
    batch = Batch(torch.arange(len(x)), groups if unit == "patient" else None)
    for part, _ in dp.chunks(batch, 3):  # two virtual-batch chunks that do not split a patient
        loss = dp.criterion(dp.model(x[part]), y[part])
        loss.backward()
        if unit == "patch":
            norms.append(per_sample_norms(dp).detach().clone())
        dp.optimizer.step()
        dp.optimizer.zero_grad(set_to_none=True)
    if unit == "patch":
        torch.testing.assert_close(torch.cat(norms), ref_norms, rtol=1e-4, atol=1e-6)
    after = torch.cat([p.detach().flatten() for p in params])
    torch.testing.assert_close(before - after, clipped_mean, rtol=1e-4, atol=1e-6)


def fourteen_patch_patient(sample_shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """20 records: one patient with 14 near-identical patches of one label, then 6 one-patch
    patients; (x, y, patient number of each record)."""
    torch.manual_seed(0)
    x = torch.rand(20, *sample_shape)
    x[:14] = x[0] + 0.01 * torch.rand(14, *sample_shape)
    y = torch.cat([torch.ones(14, dtype=torch.long), torch.randint(0, 2, (6,))])
    return x, y, torch.cat([torch.zeros(14, dtype=torch.long), torch.arange(1, 7)])


def assert_one_patient_moves_at_most_c(clipped_sum, clip: float, what: str) -> None:
    """clipped_sum(with_patient, unit): the 14-patch patient moves it by ≤ C at patient level and by
    10–14·C at patch level, where each of its patches is clipped alone."""
    for unit, low, high in (("patient", 0.0, clip), ("patch", 10 * clip, 14 * clip)):
        torch.manual_seed(0)
        with_p = clipped_sum(True, unit)
        torch.manual_seed(0)
        without = clipped_sum(False, unit)
        moved = (with_p - without).norm().item()
        assert low <= moved <= high * (1 + 1e-4), f"{unit}{what}: one patient moved the clipped sum by {moved:.4f}"


@pytest.mark.parametrize("net,mode", [("cnn", m) for m in (*MODES, "bookkeeping")] + [("head", "bookkeeping"),
                                                                                    ("scatter-cnn-head", "auto")])
def test_one_patient_moves_the_clipped_sum_by_at_most_c(net, mode):
    """Sensitivity: a patient with 14 patches changes the clipped sum (before noise) by at most C at
    patient level, and by up to 14·C at patch level, where each of its patches is clipped alone."""
    build, shape = NETWORKS[net]
    clip = 0.1
    x, y, patients = fourteen_patch_patient(shape[1:])
    x, y = x.to(DEVICE), y.to(DEVICE)

    def clipped_sum(with_patient: bool, unit: str) -> torch.Tensor:
        model = build().to(DEVICE)  # the same initialisation every time
        keep = torch.arange(20) if with_patient else torch.arange(14, 20)
        groups = torch.unique_consecutive(patients[keep], return_inverse=True)[1]
        units = groups if unit == "patient" else torch.arange(len(keep))
        params = [p for p in model.parameters() if p.requires_grad]
        dp = private(model, params, units=units, expected_units=1, mode=mode, clip=clip, unit=unit)
        dp.optimizer.noise_multiplier = 0.0
        batch = Batch(torch.arange(len(keep)), groups if unit == "patient" else None)
        for part, _ in dp.chunks(batch, 64):
            dp.criterion(dp.model(x[keep][part]), y[keep][part]).backward()
            dp.optimizer.pre_step()  # clip, sum, (zero) noise, divide by the expected batch of 1: the clipped sum
        return torch.cat([p.grad.flatten() for p in params])

    assert_one_patient_moves_at_most_c(clipped_sum, clip, "")


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("mode", [*MODES, "bookkeeping"])
def test_augmentation_multiplicity_keeps_the_sensitivity_c(mode, k):
    """A patient with 14 patches × K flip views (train.augment_multiplicity): its 14·K rows are one
    unit, summed before the one clip, so the patient moves the clipped sum by ≤ C; at patch level
    each patch's K views are one unit, so the patient moves it by up to 14·C (and more than 10·C)."""
    clip = 0.1
    x, y, patients = fourteen_patch_patient((1, 32, 32))

    def clipped_sum(with_patient: bool, unit: str) -> torch.Tensor:
        model = tiny_cnn()
        keep = torch.arange(20) if with_patient else torch.arange(14, 20)
        groups = torch.unique_consecutive(patients[keep], return_inverse=True)[1]
        units = groups if unit == "patient" else torch.arange(len(keep))
        params = [p for p in model.parameters() if p.requires_grad]
        dp = private(model, params, units=units, expected_units=1, mode=mode, clip=clip, unit=unit)
        dp.optimizer.noise_multiplier = 0.0
        batch = Batch(keep, groups if unit == "patient" else None).repeated(k)
        assert len(batch) == k * len(keep) and batch.groups is not None
        views = flip_views(0, 0, batch.idx, k)
        assert all(len(set(views[i:i + k].tolist())) == k for i in range(0, len(views), k))  # K distinct views
        xs, ys = apply_views(x[batch.idx], views), y[batch.idx]
        for part, _ in dp.chunks(batch, 64 * k):
            dp.criterion(dp.model(xs[part]), ys[part]).backward()
            dp.optimizer.pre_step()
        return torch.cat([p.grad.flatten() for p in params])

    assert_one_patient_moves_at_most_c(clipped_sum, clip, f", K={k}")


def test_multiplicity_trains_end_to_end(phantom_root, tmp_path, monkeypatch):
    """K = 4 under DP on cached features and on images: the run finishes, states its ε per patient,
    and a unit larger than physical_batch_size / K is refused before training."""
    monkeypatch.setenv("DPMAMMO_CACHE", str(tmp_path / "cache"))
    cfg = frozen_cnn_config(phantom_root, True, True).model_copy(deep=True)
    cfg.train.augment_multiplicity = 4
    fit(cfg, tmp_path / "cached", progress=False)
    assert 0 < read_privacy(tmp_path / "cached" / "privacy.json").own.epsilon <= 4.0
    whole = TrainConfig.model_validate({**frozen_cnn_config(phantom_root, False, True).model_dump(mode="json"),
                                        "model": {"name": "cnn-small", "input_size": 32, "width": 8}})
    whole.train.augment_multiplicity = 4
    whole.train.physical_batch_size = 16
    fit(whole, tmp_path / "images", progress=False)
    assert json.loads((tmp_path / "images" / "metrics.json").read_text())["val"]["auroc"] >= 0
    whole.train.physical_batch_size = 3  # one phantom patient: 1 patch × 4 views > 3 rows
    with pytest.raises(DpMammoError, match="4 views"):
        fit(whole, tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()


def test_dp_window_attention_is_timm_window_attention():
    torch.manual_seed(0)
    net = tiny_swin().eval()
    converted = prepare_for_dp(copy.deepcopy(net)).eval()
    assert sum(isinstance(m, DPWindowAttention) for m in converted.modules()) == 4
    assert [m.num_windows for m in converted.modules() if isinstance(m, DPWindowAttention)] == [4, 4, 1, 1]
    x = torch.rand(3, 3, 56, 56)
    torch.testing.assert_close(converted(x), net(x), rtol=1e-5, atol=1e-6)
    # Same state-dict keys both ways: weights move strictly between private and plain models.
    assert sorted(converted.state_dict()) == sorted(net.state_dict())
    fresh = tiny_swin()
    fresh.load_state_dict(converted.state_dict(), strict=True)
    torch.testing.assert_close(fresh.eval()(x), net(x))
    converted.load_state_dict(net.state_dict(), strict=True)


@pytest.mark.parametrize("tokens", [3, 40], ids=["ghost-gram", "instantiated"])
def test_linear_norm_sampler_on_token_inputs(tokens):
    """Both branches of the mixed ghost norm, on a (B, T1, T2, F) input like Swin's MLP."""
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)  # d_in·d_out = 30: T = 3·tokens tokens picks the branch
    a = torch.randn(4, 3, tokens, 6)
    g = torch.randn(4, 3, tokens, 5)
    norms = compute_linear_norm_sample_mixed(layer, [a], g)
    ref_w = torch.einsum("btsi,btsj->bij", g, a).flatten(1).norm(dim=1)
    ref_b = g.sum(dim=(1, 2)).norm(dim=1)
    torch.testing.assert_close(norms[layer.weight], ref_w, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norms[layer.bias], ref_b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["auto", "ghost", "bookkeeping"])
def test_full_network_dp_step_on_swin(mode):
    """All Swin layers private (tiny config through dpmammo's Swin wrapper): a real step and an
    empty Poisson batch both move every trainable tensor, and the spend is counted."""
    torch.manual_seed(0)
    model = Classifier(SwinBackbone(timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, img_size=56, embed_dim=16,
        depths=(2, 2), num_heads=(2, 4), window_size=7)), nn.Linear(32, 2), input_size=56, num_features=32).to(DEVICE)
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    dp = private(model, params, units=torch.arange(100), expected_units=8, mode=mode, target=8.0, delta=1e-3)
    dp.optimizer.original_optimizer.param_groups[0]["lr"] = 0.1
    dp.model.train()
    batch = dp.sampler.next_batch()
    x, y = torch.rand(len(batch), 1, 56, 56, device=DEVICE), torch.randint(0, 2, (len(batch),), device=DEVICE)
    for part, _ in dp.chunks(batch, 3):
        dp.criterion(dp.model(x[part]), y[part]).backward()
        dp.optimizer.step()
        dp.optimizer.zero_grad(set_to_none=True)
    dp.step_empty()
    assert all((p.detach() - s).abs().max() > 0 for p, s in zip(params, start))
    assert dp.steps_taken == 2
    assert 0 < dp.epsilon() < 8.0


class Scale(nn.Module):
    """A trainable layer with no Opacus grad sampler."""

    def __init__(self, n: int = 4):
        super().__init__()
        self.w = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * self.w


def test_auto_picks_the_clipping_mode_by_the_trainable_layers():
    """Book-keeping wherever it can clip every trainable layer; else ghost for mostly-linear weights, else hooks."""
    from dpmammo.privacy.engine import choose_grad_sample_mode

    assert choose_grad_sample_mode(tiny_head()) == "bookkeeping"
    assert choose_grad_sample_mode(create_model("cnn-small", input_size=32, width=8, freeze_backbone=True)) == "bookkeeping"
    assert choose_grad_sample_mode(prepare_for_dp(tiny_swin())) == "bookkeeping"
    assert choose_grad_sample_mode(tiny_cnn()) == "bookkeeping"
    assert choose_grad_sample_mode(tiny_ws_cnn()) == "bookkeeping"  # its grad sampler is registered
    assert choose_grad_sample_mode(nn.Sequential(Scale(), nn.Linear(4, 2))) == "ghost"
    assert choose_grad_sample_mode(nn.Sequential(Scale(16), nn.Linear(4, 2))) == "hooks"


def test_bookkeeping_refuses_a_layer_without_a_grad_sampler():
    model = nn.Sequential(Scale(), nn.Linear(4, 2))
    with pytest.raises(DpMammoError, match="cannot clip a trainable Scale layer"):
        private(model, list(model.parameters()), units=torch.arange(10), expected_units=2, mode="bookkeeping")


def test_bookkeeping_refuses_tied_weights():
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    model = nn.Sequential(first, nn.Tanh(), second)
    with pytest.raises(DpMammoError, match="shared by two layers"):
        private(model, list(model.parameters()), units=torch.arange(10), expected_units=2, mode="bookkeeping")


def test_bookkeeping_refuses_an_output_changed_in_place():
    """An in-place ReLU changes the first layer's output after it ran: its gradient would be that of
    the ReLU's output, and the clipping wrong without a sign. Refused."""
    model = nn.Sequential(nn.Linear(12, 7), nn.ReLU(inplace=True), nn.Linear(7, 2))
    dp = private(model, list(model.parameters()), units=torch.arange(10), expected_units=2, mode="bookkeeping")
    with pytest.raises(DpMammoError, match="changed in place"):
        dp.criterion(dp.model(torch.rand(3, 12)), torch.tensor([0, 1, 0])).backward()


def test_bookkeeping_refuses_an_input_changed_in_place():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            out = self.b(h)
            h += 1  # changes b's recorded input after b ran
            return out + h[:, :2]

    model = Residual()
    dp = private(model, list(model.parameters()), units=torch.arange(10), expected_units=2, mode="bookkeeping")
    with pytest.raises(DpMammoError, match="changed in place"):
        dp.criterion(dp.model(torch.rand(3, 4)), torch.tensor([0, 1, 0])).backward()


def test_bookkeeping_clips_the_gan_discriminator_like_a_per_example_loop():
    """Two inputs (patch, label), embeddings, convolutions, group norm, projection, BCE: the clipped
    mean of a book-keeping step equals the one built from a per-example loop."""
    from dpmammo.gan.config import GanModelConfig
    from dpmammo.gan.models import Discriminator

    torch.manual_seed(0)
    disc = Discriminator(GanModelConfig(image_size=16, d_width=4, d_projection=True)).to(DEVICE)
    x, labels = (torch.rand(6, 1, 16, 16) * 2 - 1).to(DEVICE), torch.randint(0, 2, (6,)).to(DEVICE)
    target = torch.tensor([0.9, 0.9, 0.9, 0.0, 0.0, 0.0], device=DEVICE)
    ref_model = copy.deepcopy(disc)
    rows = []
    for i in range(len(x)):
        ref_model.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(ref_model(x[i:i + 1], labels[i:i + 1]), target[i:i + 1]).backward()
        rows.append(flat_grad(ref_model))
    ref = torch.stack(rows)
    clip = float(ref.norm(dim=1).median())
    clipped_mean = (ref * (clip / ref.norm(dim=1, keepdim=True)).clamp(max=1.0)).sum(0) / len(x)

    params = [p for p in disc.parameters() if p.requires_grad]
    before = torch.cat([p.detach().flatten() for p in params]).clone()
    sampler = PoissonUnits(torch.arange(len(x)), len(x), SecretKey.for_tests(0))
    dp = make_private(model=disc, optimizer=torch.optim.SGD(params, lr=1.0), sampler=sampler, epochs=1,
                      config=PrivacyConfig(target_epsilon=10.0, delta=1e-5, max_grad_norm=clip,
                                           grad_sample_mode="bookkeeping", unit="patch"),
                      criterion=nn.BCEWithLogitsLoss())
    dp.optimizer.noise_multiplier = 0.0
    for part, _ in dp.chunks(Batch(torch.arange(len(x))), 4):
        dp.criterion(dp.model(x[part], labels[part]), target[part]).backward()
        dp.optimizer.step()
        dp.optimizer.zero_grad(set_to_none=True)
    after = torch.cat([p.detach().flatten() for p in params])
    torch.testing.assert_close(before - after, clipped_mean, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["hooks", "bookkeeping"])
def test_noise_drawn_ahead_has_the_calibrated_scale_and_comes_from_the_secret_key(mode):
    """An all-noise step (empty Poisson batch) moves the weights by noise of std σC / B, whether the
    noise was drawn ahead on the worker thread (a step that starts with chunks) or on the spot (an
    empty step); the same key gives the same noise, another key other noise."""
    def noise_of_two_steps(secret_seed: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        torch.manual_seed(0)
        head = nn.Linear(300, 100).to(DEVICE)
        params = list(head.parameters())
        sampler = PoissonUnits(torch.arange(1000), 50, SecretKey.for_tests(secret_seed))
        dp = make_private(model=head, optimizer=torch.optim.SGD(params, lr=1.0), sampler=sampler, epochs=1,
                          config=PrivacyConfig(target_epsilon=2.0, delta=1e-5, max_grad_norm=0.7,
                                               grad_sample_mode=mode, unit="patch"))
        moves = []
        for ahead in (True, False):
            before = torch.cat([p.detach().flatten() for p in params]).clone()
            if ahead:  # a real step whose clipped sum is zero: a zero input row has no gradient for the weight
                for part, _ in dp.chunks(Batch(torch.arange(1)), 8):
                    dp.criterion(dp.model(torch.zeros(1, 300, device=DEVICE)), torch.tensor([0], device=DEVICE)).backward()
                    dp.optimizer.step()
                    dp.optimizer.zero_grad(set_to_none=True)
            else:
                dp.step_empty()
            moves.append(before - torch.cat([p.detach().flatten() for p in params]))
        return moves[0][:30000], moves[1][:30000], dp.noise_multiplier * 0.7 / 50, dp.optimizer.noise_std()

    ahead, on_the_spot, expected_std, std = noise_of_two_steps(11)
    assert std == pytest.approx(expected_std * 50)
    for noise in (ahead, on_the_spot):
        assert noise.std().item() == pytest.approx(expected_std, rel=0.03)
        assert abs(noise.mean().item()) < 4 * expected_std / 30000 ** 0.5
    assert (ahead - on_the_spot).abs().max() > expected_std  # two steps, two draws
    again = noise_of_two_steps(11)
    assert torch.equal(again[0], ahead) and torch.equal(again[1], on_the_spot)
    other = noise_of_two_steps(12)
    assert not torch.allclose(other[0], ahead)


def test_noise_ahead_works_in_a_forked_child():
    """A child forked after a DP step has no noise thread of its parent: it must start its own."""
    import multiprocessing as mp

    from dpmammo.privacy.noise import NoiseAhead

    params = [nn.Parameter(torch.zeros(100))]
    NoiseAhead(SecretKey.for_tests(0), params).take(1.0)  # the parent's worker thread exists now
    with mp.get_context("fork").Pool(1) as pool:
        std = pool.apply_async(_draw_in_child).get(timeout=60)
    assert 0.5 < std < 1.5


def _draw_in_child() -> float:
    from dpmammo.privacy.noise import NoiseAhead

    return float(NoiseAhead(SecretKey.for_tests(1), [nn.Parameter(torch.zeros(1000))]).take(1.0)[0].std())
