"""The scatter model's public projection (`model.public_pca`): fitted on procedural images only,
deterministic from its seed, whitened as documented, carried in the model's weights, and a DP head
on it learns phantoms with the run's guarantee unchanged."""

from __future__ import annotations

import builtins
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dpmammo.data.procedural.store import generate
from dpmammo.errors import DpMammoError
from dpmammo.models.config import ScatterConfig
from dpmammo.models.registry import create_model
from dpmammo.models.scatter import ScatterBackbone, fit_public_basis
from dpmammo.privacy import read_privacy
from dpmammo.privacy.ledger import compose
from dpmammo.train import fit
from tests.test_train import SEEDED, phantom_config

SMALL = {"images_per_kind": 64, "components": 8, "kinds": ["mammo-phantom", "spectral"]}


def small_scatter(**pca) -> torch.nn.Module:
    return create_model("scatter", input_size=32, pool=2, public_pca={**SMALL, **pca})


def test_the_basis_repeats_for_a_seed_and_differs_across_seeds():
    """Fitted twice (no cache between): the same bytes; another seed: another basis."""
    cfg = ScatterConfig(input_size=32, pool=2, public_pca=SMALL)
    backbone = ScatterBackbone(input_size=32, J=cfg.J, L=cfg.L, pool=cfg.pool, groups=cfg.groups)
    pa, pb = fit_public_basis(backbone, cfg.public_pca), fit_public_basis(backbone, cfg.public_pca)
    pc = fit_public_basis(backbone, cfg.public_pca.model_copy(update={"seed": 1}))
    assert all(torch.equal(x, y) for x, y in zip(pa.state_dict().values(), pb.state_dict().values()))
    assert (pa.components - pc.components).abs().max() > 1e-3
    # the cached basis is the fitted one
    assert torch.equal(small_scatter().backbone.projection.components, pa.components)
    # each component's largest entry is positive (the sign convention), and the rows are orthonormal
    comps = pa.components.double()
    assert bool((comps.gather(1, comps.abs().argmax(1, keepdim=True)) > 0).all())
    assert torch.allclose(comps @ comps.T, torch.eye(8, dtype=torch.float64), atol=1e-5)


def test_procedural_features_are_whitened_to_the_unprojected_norm():
    """On the images it was fitted on, each projected coordinate has mean 0 and variance D/k, so the
    squared norm averages D = K·pool², that of the group-normalised features it replaces."""
    cfg = ScatterConfig(input_size=32, pool=2, public_pca=SMALL)
    backbone = ScatterBackbone(input_size=32, J=cfg.J, L=cfg.L, pool=cfg.pool, groups=cfg.groups)
    projection = fit_public_basis(backbone, cfg.public_pca)
    images = torch.cat([generate(k, seed=0, start=0, stop=64, size=32)[0] for k in SMALL["kinds"]])
    with torch.no_grad():
        full = backbone(images.float() / 255.0)
        z = projection(full).double()
    d = full.shape[1]
    assert d == 81 * 4 and z.shape == (128, 8)
    assert z.mean(0).abs().max() < 1e-3 * math.sqrt(d / 8)
    assert torch.allclose(z.var(0, unbiased=False), torch.full((8,), d / 8, dtype=torch.float64), rtol=1e-3)
    assert abs(z.pow(2).sum(1).mean().item() - d) < 1e-2 * d


def test_fitting_the_basis_opens_no_file(monkeypatch, tmp_path, phantom_root):
    """The basis is public: no file is read to fit it (the procedural images are made in memory),
    with a data root set where a stray read would find patches."""
    monkeypatch.setenv("DPMAMMO_CACHE", str(tmp_path / "cache"))  # an empty cache: the basis is fitted here
    monkeypatch.setenv("DPMAMMO_DATA", str(phantom_root))
    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: spy(self, *a, **k))
    model = small_scatter(seed=3)
    assert model.num_features == 8
    basis_files = str(tmp_path / "cache" / "features" / "public-pca-")
    read = [f for f in opened if not f.startswith(basis_files) and "site-packages" not in f and "/lib/python" not in f]
    assert read == [], f"fitting the public basis opened {read}"
    assert len(list((tmp_path / "cache" / "features").glob("public-pca-*.pt"))) == 1


def test_a_saved_model_carries_its_projection(tmp_path, monkeypatch):
    """A weight file holds the projection: loaded into a model whose basis was fitted otherwise (here
    another seed), it gives the saved model's outputs exactly."""
    from dpmammo.models.weights import save_weights

    model = small_scatter()
    torch.nn.init.normal_(model.head.weight)
    save_weights(model, tmp_path / "model.safetensors")
    other = small_scatter(seed=5)
    x = torch.rand(4, 1, 32, 32)
    assert not torch.allclose(other.forward_features(x), model.forward_features(x))
    again = create_model("scatter", input_size=32, pool=2, public_pca={**SMALL, "seed": 5},
                         weights=tmp_path / "model.safetensors")
    assert torch.equal(again(x), model(x))


def test_the_config_refuses_unknown_kinds_and_too_many_components():
    with pytest.raises(DpMammoError, match="unknown procedural kind"):
        create_model("scatter", input_size=32, pool=2, public_pca={"kinds": ["clouds"]})
    with pytest.raises(DpMammoError, match="exceeds 127"):
        create_model("scatter", input_size=32, pool=2, public_pca={**SMALL, "components": 200})


def test_with_pixels_appends_the_pixels_public_projection(tmp_path, monkeypatch):
    """`with_pixels`: the patch's standardised 8×8 pixels, projected on their own basis fitted on the
    same procedural images (whitened to their unprojected squared norm there), appended to the
    projected scattering features, the two scaled by 1/√2; carried in the weights like the first."""
    from dpmammo.models.pixels import PixelFeatures
    from dpmammo.models.weights import save_weights

    monkeypatch.setenv("DPMAMMO_CACHE", str(tmp_path / "cache"))
    model = create_model("scatter", input_size=32, pool=2, public_pca=SMALL,
                         with_pixels={"resolution": 8, "components": 4})
    assert model.num_features == 8 + 4
    pixels = PixelFeatures(input_size=32, resolution=8)
    cfg = ScatterConfig(input_size=32, pool=2, public_pca=SMALL)
    pixel_basis = fit_public_basis(pixels, cfg.public_pca.model_copy(update={"components": 4}))
    images = torch.cat([generate(k, seed=0, start=0, stop=64, size=32)[0] for k in SMALL["kinds"]]).float() / 255.0
    with torch.no_grad():
        z = pixel_basis(pixels(images)).double()
        joined = model.forward_features(images)
        scatter_part = model.backbone.projection(model.backbone.scatter(images))
    assert abs(z.pow(2).sum(1).mean().item() - 64) < 1e-2 * 64  # the pixels' squared norm, 8², kept
    assert torch.allclose(joined, torch.cat([scatter_part, z.float()], 1) / math.sqrt(2), atol=1e-4)
    save_weights(model, tmp_path / "model.safetensors")
    assert {"backbone.pixels_projection.components", "backbone.projection.components"} <= set(
        load_file(str(tmp_path / "model.safetensors")))
    with pytest.raises(DpMammoError, match="with_pixels needs public_pca"):
        create_model("scatter", input_size=32, pool=2, with_pixels={"resolution": 8, "components": 4})
    with pytest.raises(DpMammoError, match="with_pixels.components 64 exceeds 63"):  # standardised: rank 8² − 1
        create_model("scatter", input_size=32, pool=2, public_pca=SMALL, with_pixels={"resolution": 8, "components": 64})
    # Each basis is cached under its own key: the pixels' depends on the patch size they are pooled from.
    create_model("scatter", input_size=64, pool=2, public_pca=SMALL, with_pixels={"resolution": 8, "components": 4})
    assert len(list((tmp_path / "cache" / "features").glob("public-pca-*.pt"))) == 4  # scatter and pixels × 32, 64 px


def test_dp_head_on_public_pca_features_learns_phantoms_with_the_same_guarantee(phantom_root, tmp_path, monkeypatch):
    """A DP linear head on the projected features: the run's ledger is that of the unprojected
    model at the same settings plus a public stage naming the basis's procedural images (the
    projection spends nothing: the same chain total), and it learns."""
    monkeypatch.setenv("DPMAMMO_CACHE", str(tmp_path / "cache"))  # other tests expect to compute these features
    def run(name, **model):
        cfg = phantom_config(phantom_root, model__={"name": "scatter", "input_size": 64, **model},
                             privacy__={"target_epsilon": 4.0, **SEEDED}, train__epochs=3, train__batch_size=100,
                             optim__lr=0.5, train__augment="none")
        metrics = fit(cfg, tmp_path / name, progress=False)
        return metrics, read_privacy(tmp_path / name / "privacy.json")

    m, rec = run("pca", public_pca={"images_per_kind": 256, "components": 32})
    _, plain = run("plain")
    assert (rec.own.epsilon, rec.own.steps, rec.own.noise_multiplier, rec.own.sample_rate) == (
        plain.own.epsilon, plain.own.steps, plain.own.noise_multiplier, plain.own.sample_rate)
    basis, *rest = rec.stages
    assert [s.stage for s in rest] == [s.stage for s in plain.stages]
    assert rec.total.model_dump(exclude={"stages", "method"}) == plain.total.model_dump(exclude={"stages", "method"})
    # (seeded noise here: no guarantee for either.) With DP noise, the public stage adds nothing to the total:
    own = rec.own.model_copy(update={"guarantee": "dp", "reason": None})
    assert compose([basis, own], delta=own.delta).epsilon == compose([own], delta=own.delta).epsilon == own.epsilon
    assert basis.stage == "public-basis" and basis.guarantee == "public" and basis.data == [
        "procedural/mammo-phantom", "procedural/spectral", "procedural/dead-leaves", "procedural/random-generator"]
    assert "images 0..255" in basis.note and "seed 0" in basis.note
    assert "features: computed (400, 1, 32)" in (tmp_path / "pca" / "log.txt").read_text()
    assert set(load_file(str(tmp_path / "pca" / "model.safetensors"))) == {
        "backbone.projection.mean", "backbone.projection.components", "backbone.projection.scale",
        "head.weight", "head.bias"}
    assert m["val"]["auroc"] >= 0.8
    # A run from this one loads its projection with its weights: the parent's chain names the basis, once.
    child = phantom_config(phantom_root, model__={"name": "scatter", "input_size": 64,
                                                  "public_pca": {"images_per_kind": 256, "components": 32}},
                           privacy__={"target_epsilon": 4.0, **SEEDED}, train__epochs=1, train__batch_size=100,
                           train__augment="none", init_from__=str(tmp_path / "pca"))
    fit(child, tmp_path / "child", progress=False)
    stages = read_privacy(tmp_path / "child" / "privacy.json").stages
    assert [s.stage for s in stages] == ["public-basis", "classifier", "classifier"]


def test_a_symmetrised_projection_is_fitted_on_the_averaged_features_and_says_so(phantom_root, tmp_path, monkeypatch):
    """symmetrize: dihedral with public_pca: the basis is fitted on the features averaged over the 8
    flips and transposes (another basis than the plain one, and the projected features are the same
    in every orientation), a run computes one view per patch, and its ledger's public stage says what
    was projected."""
    monkeypatch.setenv("DPMAMMO_CACHE", str(tmp_path / "cache"))
    sym = create_model("scatter", input_size=32, pool=2, public_pca=SMALL, symmetrize="dihedral")
    plain = small_scatter()
    assert (sym.backbone.projection.components - plain.backbone.projection.components).abs().max() > 1e-3
    x = generate("dead-leaves", seed=3, start=0, stop=4, size=32)[0].float() / 255.0
    feats = sym.forward_features(x)
    for view in (x.flip(-1), x.transpose(-1, -2), x.transpose(-1, -2).flip(-2)):
        torch.testing.assert_close(sym.forward_features(view), feats, rtol=1e-4, atol=1e-4)
    assert (plain.forward_features(x.transpose(-1, -2)) - plain.forward_features(x)).abs().max() > 1e-2
    cfg = phantom_config(phantom_root, model__={"name": "scatter", "input_size": 32, "pool": 2, "public_pca": SMALL,
                                                "symmetrize": "dihedral"},
                         privacy__={"target_epsilon": 4.0, **SEEDED}, train__epochs=1, train__batch_size=100,
                         optim__lr=0.5, train__augment="none")
    fit(cfg, tmp_path / "sym", progress=False)
    basis = read_privacy(tmp_path / "sym" / "privacy.json").stages[0]
    assert basis.stage == "public-basis" and "averaged over the patch's 8 flips and transposes" in basis.note
    assert "features: computed (400, 1, 8)" in (tmp_path / "sym" / "log.txt").read_text()
