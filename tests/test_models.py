"""Registry and strict weight loading."""

from __future__ import annotations

import pytest
import torch

from dpmammo.errors import DpMammoError
from dpmammo.models import create_model, list_models, load_weights, save_weights


def test_registry_lists_models_and_refuses_unknown_names():
    assert {"cnn-small", "swin_t"} <= set(list_models())
    with pytest.raises(DpMammoError, match="unknown model 'resnet'.*cnn-small"):
        create_model("resnet")
    with pytest.raises(DpMammoError, match="widht: unknown key"):
        create_model("cnn-small", widht=8)


def test_cnn_small_outputs_two_logits_and_has_no_batchnorm():
    m = create_model("cnn-small", input_size=32, width=8)
    assert m(torch.rand(3, 1, 32, 32)).shape == (3, 2)
    assert m.forward_features(torch.rand(3, 1, 32, 32)).shape == (3, m.num_features)
    assert not any(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.modules())


def test_swin_t_random_init_has_paper_head_and_freezes():
    m = create_model("swin_t", head="mlp", freeze_backbone=True)
    assert [tuple(p.shape) for p in m.head.parameters()] == [(384, 768), (384,), (2, 384), (2,)]
    assert all(not p.requires_grad for p in m.backbone.parameters())
    assert all(p.requires_grad for p in m.head.parameters())
    m.train()
    assert not m.backbone.training  # frozen backbone stays in eval mode
    assert m(torch.rand(1, 1, 224, 224)).shape == (1, 2)


def test_weights_round_trip_exactly(tmp_path):
    a = create_model("cnn-small", input_size=32, width=8)
    save_weights(a, tmp_path / "w.safetensors")
    b = create_model("cnn-small", input_size=32, width=8, weights=tmp_path / "w.safetensors")
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(a(x), b(x))


def test_missing_weight_file_is_an_error(tmp_path):
    with pytest.raises(DpMammoError, match="weight file not found: .*nope.safetensors"):
        create_model("cnn-small", weights=tmp_path / "nope.safetensors")


def test_shape_mismatch_is_an_error_not_a_partial_load(tmp_path):
    save_weights(create_model("cnn-small", width=8), tmp_path / "w8.safetensors")
    with pytest.raises(DpMammoError, match="another shape"):
        load_weights(create_model("cnn-small", width=16), tmp_path / "w8.safetensors")


def test_missing_and_unexpected_keys_are_errors(tmp_path):
    m = create_model("cnn-small", width=8)
    state = m.state_dict()
    state.pop("head.bias")
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(DpMammoError, match="1 missing .*head.bias"):
        load_weights(m, tmp_path / "missing.pt")
    state = {**m.state_dict(), "extra.weight": torch.zeros(1)}
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(DpMammoError, match="1 unexpected .*extra.weight"):
        load_weights(m, tmp_path / "extra.pt")


def test_corrupt_weight_file_is_an_error(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(DpMammoError, match="cannot read weight file"):
        create_model("cnn-small", weights=tmp_path / "bad.safetensors")


def test_weight_standardized_convs_see_standardized_filters():
    """Each conv applies (w − mean) / sqrt(var + eps) per output channel; the parameters stay raw."""
    from dpmammo.models.cnn import WSConv2d

    torch.manual_seed(0)
    ws = create_model("cnn-small", input_size=32, width=8, weight_standardization=True)
    plain = create_model("cnn-small", input_size=32, width=8)
    plain.load_state_dict(ws.state_dict())  # same keys: the raw weights move between both
    convs = [m for m in ws.modules() if isinstance(m, WSConv2d)]
    assert len(convs) == 3 and not any(isinstance(m, WSConv2d) for m in plain.modules())
    x = torch.rand(2, 1, 32, 32)
    for conv, ref in zip(convs, [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]):
        w = conv.weight.detach().flatten(1)
        std_w = (w - w.mean(1, keepdim=True)) / (w.var(1, unbiased=False, keepdim=True) + conv.eps).sqrt()
        h = torch.randn(2, conv.in_channels, 8, 8)
        torch.testing.assert_close(conv(h), torch.nn.functional.conv2d(h, std_w.view_as(conv.weight), conv.bias,
                                                                       padding=1))
        assert (conv.weight.flatten(1).mean(1).abs() > 1e-3).any()  # the raw weights are not standardised
    assert not torch.allclose(ws(x), plain(x), atol=1e-3)
