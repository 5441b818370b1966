"""Fast DP-SGD: cached features for frozen backbones, every grad-sample mode against a naive
per-example loop, Swin window attention made DP-trainable."""

from __future__ import annotations

import copy
import json

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn

from dpmammo.data.phantoms import make_phantoms
from dpmammo.models import create_model
from dpmammo.models.classifier import Classifier
from dpmammo.models.swin import SwinBackbone
from dpmammo.privacy import PrivacyConfig, make_private
from dpmammo.privacy.grad_samplers import DPWindowAttention, compute_linear_norm_sample_mixed, prepare_for_dp
from dpmammo.train import TrainConfig, fit

MODES = ["hooks", "functorch", "ghost"]


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
        data["privacy"] = {"target_epsilon": 4.0, "delta": 1e-3, "max_grad_norm": 0.5}
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
        privacy = json.loads((runs[True] / "privacy.json").read_text())
        assert 0 < privacy["epsilon"] <= 4.0
        assert privacy["steps"] == 2 * 4  # epochs / q = 2 / (10 / 40)


def tiny_swin() -> nn.Module:
    """Two Swin stages: 14×14 tokens in 4 shifted 7×7 windows, then one 7×7 window."""
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=2, img_size=56,
                             embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=7, drop_path_rate=0.0)


def tiny_cnn() -> nn.Module:
    return create_model("cnn-small", input_size=32, width=8)


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
    return torch.stack([p.grad_sample.flatten(1).norm(dim=1) for p in dp.optimizer.params]).norm(dim=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("build,shape", [(tiny_cnn, (5, 1, 32, 32)), (tiny_swin, (5, 3, 56, 56))], ids=["cnn", "swin"])
def test_per_sample_gradients_match_a_per_example_loop(build, shape, mode):
    torch.manual_seed(0)
    model = prepare_for_dp(build())  # the reference runs the same (converted) function
    x, y = torch.rand(shape), torch.randint(0, 2, (shape[0],))
    ref = per_example_grads(copy.deepcopy(model), x, y)
    ref_norms = ref.norm(dim=1)
    clip = float(ref_norms.median())  # about half of the samples get clipped
    clipped_mean = (ref * (clip / ref_norms[:, None]).clamp(max=1.0)).sum(0) / len(x)

    params = [p for p in model.parameters() if p.requires_grad]
    before = torch.cat([p.detach().flatten() for p in params]).clone()
    dp = make_private(model=model, optimizer=torch.optim.SGD(params, lr=1.0), dataset_size=1000, batch_size=len(x),
                      epochs=1, config=PrivacyConfig(target_epsilon=10, max_grad_norm=clip, grad_sample_mode=mode))
    assert dp.grad_sample_mode == mode
    dp.optimizer.noise_multiplier = 0.0  # isolate clipping; noise is Opacus's own, tested there
    dp.model.train()
    norms = []
    for part, _ in dp.physical_chunks(len(x), 3):  # two virtual-batch chunks: 3 + 2
        loss = dp.criterion(dp.model(x[part]), y[part])
        loss.backward()
        norms.append(per_sample_norms(dp).detach().clone())
        dp.optimizer.step()
        dp.optimizer.zero_grad(set_to_none=True)
    torch.testing.assert_close(torch.cat(norms), ref_norms, rtol=1e-4, atol=1e-6)
    after = torch.cat([p.detach().flatten() for p in params])
    torch.testing.assert_close(before - after, clipped_mean, rtol=1e-4, atol=1e-6)


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


@pytest.mark.parametrize("mode", ["auto", "ghost"])
def test_full_network_dp_step_on_swin(mode):
    """All Swin layers private (tiny config through dpmammo's Swin wrapper): a real step and an
    empty Poisson batch both move every trainable tensor, and the spend is counted."""
    torch.manual_seed(0)
    model = Classifier(SwinBackbone(timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, img_size=56, embed_dim=16,
        depths=(2, 2), num_heads=(2, 4), window_size=7)), nn.Linear(32, 2), input_size=56, num_features=32)
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    dp = make_private(model=model, optimizer=torch.optim.SGD(params, lr=0.1), dataset_size=100, batch_size=8,
                      epochs=1, config=PrivacyConfig(target_epsilon=8.0, delta=1e-3, grad_sample_mode=mode))
    dp.model.train()
    gen = torch.Generator().manual_seed(0)
    idx = dp.sample_batch(gen)
    x, y = torch.rand(len(idx), 1, 56, 56), torch.randint(0, 2, (len(idx),))
    for part, _ in dp.physical_chunks(len(idx), 3):
        dp.criterion(dp.model(x[part]), y[part]).backward()
        dp.optimizer.step()
        dp.optimizer.zero_grad(set_to_none=True)
    dp.step_empty()
    assert all((p.detach() - s).abs().max() > 0 for p, s in zip(params, start))
    assert dp.steps_taken == 2
    assert 0 < dp.epsilon() < 8.0
