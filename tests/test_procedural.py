"""Procedural priors: images from public random processes, and pretraining on them, cost no privacy.

Each kind repeats byte for byte from its seed and differs across seeds; neither `data procedural`
nor `pretrain` touches the data root; a pretrain run is one public stage, and a DP run started from
it states the same total (ε per patient) as one from random initialisation.
"""

from __future__ import annotations

import builtins
import io
import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dpmammo.config import parse_config
from dpmammo.data.procedural.kinds import KINDS
from dpmammo.data.procedural.store import OWN_FILES, generate, read_procedural, write_procedural
from dpmammo.errors import DpMammoError
from dpmammo.models import create_model, load_init_weights
from dpmammo.privacy import StageSpend, read_privacy
from dpmammo.train import TrainConfig, fit
from dpmammo.train.pretrain import align_loss, pretrain, uniform_loss
from dpmammo.train.pretrain_config import AlignUniform, PretrainConfig
from tests.test_train import phantom_config


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_repeats_from_its_seed_and_differs_across_seeds(kind):
    x, y = generate(kind, seed=0, start=0, stop=300, size=32)
    again_x, again_y = generate(kind, seed=0, start=0, stop=300, size=32)
    assert x.dtype == torch.uint8 and x.shape == (300, 1, 32, 32)
    assert torch.equal(x, again_x) and torch.equal(y, again_y)
    # Image i depends on (kind, seed, i) only: a range from the middle is the same images.
    part_x, part_y = generate(kind, seed=0, start=250, stop=300, size=32)
    assert torch.equal(part_x, x[250:]) and torch.equal(part_y, y[250:])
    other, _ = generate(kind, seed=1, start=0, stop=300, size=32)
    assert (other != x).float().mean() > 0.5
    # Every class of the process occurs, and the images are not flat.
    assert torch.bincount(y, minlength=len(KINDS[kind].classes)).min() > 0 and y.max() < len(KINDS[kind].classes)
    assert x.float().std(dim=(1, 2, 3)).min() > 2.0


def test_kinds_with_one_seed_differ():
    images = [generate(k, seed=0, start=0, stop=8, size=32)[0] for k in KINDS]
    assert all((a != b).float().mean() > 0.5 for i, a in enumerate(images) for b in images[i + 1:])


def test_a_procedural_folder_holds_what_its_provenance_says(tmp_path):
    out = tmp_path / "set"
    prov = write_procedural(out, "spectral", n=300, size=32, seed=4)
    assert sorted(p.name for p in out.iterdir()) == sorted(OWN_FILES)
    images, labels, read = read_procedural(out)
    x, y = generate("spectral", seed=4, start=0, stop=300, size=32)
    assert np.array_equal(images, x[:, 0].numpy()) and np.array_equal(labels, y.numpy())
    assert read == json.loads(json.dumps(prov)) and prov["class_counts"] == np.bincount(labels).tolist()
    stage = StageSpend.model_validate(prov["chain"][0])
    assert len(prov["chain"]) == 1 and stage.guarantee == "public"
    assert "seed 4" in stage.note and "no private data" in stage.note and prov["params"] == KINDS["spectral"].params

    before = (out / "images.npy").read_bytes()
    with pytest.raises(DpMammoError, match="already holds a procedural set"):
        write_procedural(out, "spectral", n=300, size=32, seed=5)
    assert (out / "images.npy").read_bytes() == before
    write_procedural(out, "spectral", n=300, size=32, seed=5, force=True)
    assert (out / "images.npy").read_bytes() != before and read_procedural(out)[2]["seed"] == 5

    (out / "notes.txt").write_text("mine")
    with pytest.raises(DpMammoError, match="holds files dpmammo did not write"):
        write_procedural(out, "spectral", n=300, size=32, seed=5, force=True)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()

    arr = np.load(out / "images.npy", mmap_mode="r+")
    arr[3, 0, 0] ^= 1
    arr.flush()
    del arr
    with pytest.raises(DpMammoError, match="do not match the SHA-256"):
        read_procedural(out)


@pytest.mark.parametrize("kwargs,message", [
    ({"kind": "plasma"}, "unknown procedural kind 'plasma'; registered kinds: dead-leaves"),
    ({"size": 40}, "size=40 must be a multiple of 16"),
    ({"seed": -1}, "seed=-1 must be ≥ 0"),
    ({"n": 0}, "need at least one image"),
])
def test_bad_procedural_requests_are_refused(tmp_path, kwargs, message):
    args = {"kind": "spectral", "n": 10, "size": 32, "seed": 0, **kwargs}
    with pytest.raises(DpMammoError, match=message):
        write_procedural(tmp_path / "out", args.pop("kind"), **args)
    assert not (tmp_path / "out").exists()


@contextmanager
def data_root_untouched(root: Path):
    """Fail on any open, stat or listing of a path under `root` (Python's and PIL's file access)."""
    root = os.path.realpath(root)
    hits: list[str] = []

    def guard(fn):
        def wrapped(path, *args, **kwargs):
            if isinstance(path, (str, bytes, os.PathLike)):
                p = os.path.abspath(os.fsdecode(path))
                if p == root or p.startswith(root + os.sep):
                    hits.append(f"{fn.__name__}({p})")
                    raise AssertionError(f"{fn.__name__} touched {p} under the data root")
            return fn(path, *args, **kwargs)
        return wrapped

    mp = pytest.MonkeyPatch()
    for owner, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "stat"), (os, "lstat"),
                        (os, "scandir"), (os, "listdir"), (PIL.Image, "open")):
        mp.setattr(owner, name, guard(getattr(owner, name)))
    try:
        yield hits
    finally:
        mp.undo()


SMALL = {"name": "cnn-small", "input_size": 32, "width": 8}  # pretraining and the DP runs after it


def tiny_pretrain_config(**data) -> PretrainConfig:
    return parse_config(PretrainConfig, {
        "data": {"kinds": ["mammo-phantom", "spectral"], "n": 256, "n_val": 256, "seed": 0, **data},
        "model": SMALL,
        "train": {"epochs": 1, "batch_size": 64, "seed": 0, "device": "cpu"}}, "test")


def test_procedural_data_and_pretraining_never_touch_the_data_root(tmp_path, phantom_root, monkeypatch):
    """With DPMAMMO_DATA set to a real data root, `data procedural` and `pretrain` (from the CLI, on
    the fly and from a folder) run without one open, stat or listing under it; the guard itself
    catches a plain look at the root."""
    from dpmammo.cli import app
    from dpmammo.data.sets import resolve_root

    monkeypatch.setenv("DPMAMMO_DATA", str(phantom_root))
    runner = CliRunner()
    cfg = tmp_path / "pretrain.yaml"
    cfg.write_text(json.dumps(tiny_pretrain_config(folders=[str(tmp_path / "set")], kinds=["spectral"])
                              .model_dump(mode="json")))
    with data_root_untouched(phantom_root) as hits:
        r = runner.invoke(app, ["data", "procedural", str(tmp_path / "set"), "--kind", "mammo-phantom", "--n", "256",
                                "--size", "32", "--seed", "0"])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["pretrain", str(cfg), "--out", str(tmp_path / "run")])
        assert r.exit_code == 0, (r.output, r.exception)
        assert hits == []
        with pytest.raises(AssertionError, match="under the data root"):
            resolve_root(None)
    assert hits  # the positive control was seen
    assert "no private data used" in r.output
    assert [s["kind"] for s in json.loads((tmp_path / "run" / "metrics.json").read_text())["sources"]] == \
        ["mammo-phantom", "spectral"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Two tiny pretrain runs: mammo-phantom + spectral (6 classes), and mammo-phantom alone (2)."""
    root = tmp_path_factory.mktemp("pretrain")
    pretrain(tiny_pretrain_config(), root / "mixed", progress=False)
    pretrain(tiny_pretrain_config(kinds=["mammo-phantom"]), root / "phantom", progress=False)
    cfg = tiny_pretrain_config().model_copy(update={"objective": AlignUniform(name="align-uniform", feature_dim=16)})
    pretrain(cfg, root / "contrastive", progress=False)
    return root


@pytest.mark.parametrize("run,objective", [("mixed", "supervised"), ("contrastive", "align-uniform")])
def test_a_pretrain_run_is_one_public_stage(pretrained, run, objective):
    rec = read_privacy(pretrained / run / "privacy.json")
    (stage,) = rec.stages
    assert stage.guarantee == "public" and rec.total.guarantee == "public"
    assert stage.data == ["procedural/mammo-phantom", "procedural/spectral"]
    assert "seed 0" in stage.note and "no private data" in stage.note and rec.describe() == "no private data used"
    metrics = json.loads((pretrained / run / "metrics.json").read_text())
    assert metrics["objective"] == objective and metrics["n_private"] == 0 and metrics["train_size"] == 512
    assert len(metrics["classes"]) == 6 and 0 <= metrics["val"]["accuracy"] <= 1 and metrics["val"]["n"] == 512


def test_alignment_and_uniformity_match_a_naive_loop():
    """Wang & Isola (2020): alignment E||x - y||^alpha over pairs; uniformity log E_{i<j} exp(-t||x_i - x_j||²)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(7, 5, generator=gen), dim=1)
    y = torch.nn.functional.normalize(torch.randn(7, 5, generator=gen), dim=1)
    align = sum(float(torch.dot(x[i] - y[i], x[i] - y[i])) ** 1.5 for i in range(7)) / 7
    pairs = [float(torch.dot(x[i] - x[j], x[i] - x[j])) for i in range(7) for j in range(i + 1, 7)]
    uniform = math.log(sum(math.exp(-2.0 * d) for d in pairs) / len(pairs))
    assert align_loss(x, y, 3.0).item() == pytest.approx(align, rel=1e-5)
    assert uniform_loss(x, 2.0).item() == pytest.approx(uniform, rel=1e-5)
    # Identical views align perfectly; a collapsed representation is as non-uniform as can be (0).
    assert align_loss(x, x, 2.0).item() == 0 and uniform_loss(x[:1].expand(7, 5), 2.0).item() == pytest.approx(0, abs=1e-6)


def test_the_backbone_loads_strictly_and_the_head_starts_fresh(pretrained):
    weights = pretrained / "mixed" / "model.safetensors"
    state = load_file(weights)
    assert state["head.weight"].shape == (6, 32)
    torch.manual_seed(0)
    fresh = create_model("cnn-small", input_size=32, width=8)
    torch.manual_seed(0)
    model = create_model("cnn-small", input_size=32, width=8)
    with pytest.raises(DpMammoError, match="set init_weights: backbone"):
        load_init_weights(model, weights, "all")
    load_init_weights(model, weights, "backbone")
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, state[f"backbone.{k}"])
    assert all(torch.equal(v, fresh.head.state_dict()[k]) for k, v in model.head.state_dict().items())
    wider = create_model("cnn-small", input_size=32, width=16)
    with pytest.raises(DpMammoError, match="do not fit the model"):
        load_init_weights(wider, weights, "backbone")
    projection = pretrained / "contrastive" / "model.safetensors"
    with pytest.raises(DpMammoError, match="set init_weights: backbone"):
        load_init_weights(model, projection, "all")
    load_init_weights(model, projection, "backbone")
    assert torch.equal(model.backbone.state_dict()["1.0.weight"], load_file(projection)["backbone.1.0.weight"])


def test_a_dp_run_from_a_pretrain_run_keeps_the_total_of_random_init(phantom_root, pretrained, tmp_path):
    """ε = 2 per patient with the chain total as target: from the pretrain run, the stage draws the σ
    that random init draws at the same sample rate (the public stage takes nothing from the budget)
    and states the same total."""
    from dpmammo.privacy import GaussianRelease, calibrate_noise

    base = dict(train__epochs=1, train__batch_size=100, model__=SMALL)
    fit(phantom_config(phantom_root, privacy__={"target_epsilon": 2.0}, **base), tmp_path / "scratch", progress=False)
    fit(phantom_config(phantom_root, privacy__={"target_epsilon": 2.0, "target": "total"},
                       init_from__=str(pretrained / "mixed"), init_weights__="backbone", **base),
        tmp_path / "pretrained", progress=False)
    scratch = read_privacy(tmp_path / "scratch" / "privacy.json")
    chained = read_privacy(tmp_path / "pretrained" / "privacy.json")
    assert [s.guarantee for s in chained.stages] == ["public", "dp"] and chained.stages[0].stage == "pretrain"
    assert chained.total.guarantee == scratch.total.guarantee == "dp" and chained.total.unit == "patient"
    own = chained.own  # each run's rate comes from its own noisy patient count: compare at the same rate
    alone = calibrate_noise(target_epsilon=2.0, delta=own.delta, sample_rate=own.sample_rate, steps=own.steps,
                            accountant="rdp", prior=[GaussianRelease.unit_count(own.unit_count_noise, own.unit)])
    assert own.noise_multiplier == alone and own.steps == round(1 / own.sample_rate)
    assert chained.total.epsilon == pytest.approx(own.epsilon) and own.epsilon <= 2.0 and scratch.total.epsilon <= 2.0


def test_a_run_from_an_unaccounted_parent_has_no_guarantee(phantom_root, pretrained, tmp_path):
    """A parent whose ledger has no guarantee, or the pretrain weights outside their run (unknown
    origin), make the total "no guarantee", never a smaller ε."""
    quick = dict(train__epochs=1, train__batch_size=100, model__=SMALL)
    fit(phantom_config(phantom_root, **quick), tmp_path / "non-private", progress=False)
    fit(phantom_config(phantom_root, privacy__={"target_epsilon": 2.0}, init_from__=str(tmp_path / "non-private"),
                       **quick), tmp_path / "child", progress=False)
    rec = read_privacy(tmp_path / "child" / "privacy.json")
    assert rec.total.guarantee == "none" and rec.total.reason == "non-private" and rec.total.epsilon is None
    assert rec.describe() == "no guarantee (private data used without DP)"

    loose = tmp_path / "backbone.safetensors"
    shutil.copy(pretrained / "phantom" / "model.safetensors", loose)  # 2 classes: the whole model fits
    with_weights = {**quick, "model__": {**SMALL, "weights": str(loose)}}
    fit(phantom_config(phantom_root, privacy__={"target_epsilon": 2.0}, **with_weights), tmp_path / "loose",
        progress=False)
    rec = read_privacy(tmp_path / "loose" / "privacy.json")
    assert rec.total.guarantee == "none" and rec.describe() == "no guarantee (an input of unknown origin)"


def test_pretrain_refuses_an_out_that_overlaps_its_input_folder(tmp_path):
    write_procedural(tmp_path / "set", "spectral", n=8, size=32, seed=0)
    before = {p.name: p.read_bytes() for p in (tmp_path / "set").iterdir()}
    cfg = tiny_pretrain_config(kinds=[], folders=[str(tmp_path / "set")])
    for out in (tmp_path / "set", tmp_path / "set" / "run", tmp_path):
        with pytest.raises(DpMammoError, match="is, holds or lies inside the input folder"):
            pretrain(cfg, out, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "set").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_bad_pretrain_configs_are_refused():
    with pytest.raises(DpMammoError, match="unknown kind 'plasma'; registered kinds: dead-leaves"):
        tiny_pretrain_config(kinds=["plasma"])
    with pytest.raises(DpMammoError, match="give kinds"):
        tiny_pretrain_config(kinds=[])
    with pytest.raises(DpMammoError, match=r"crop_scale must satisfy 0 < low ≤ high ≤ 1, got \[0.5, 0.2\]"):
        parse_config(AlignUniform, {"name": "align-uniform", "crop_scale": [0.5, 0.2]}, "test")
    with pytest.raises(DpMammoError, match="init_weights: backbone needs init_from"):
        parse_config(TrainConfig, {"init_weights": "backbone"}, "test")


@pytest.mark.slow
def test_a_procedural_prior_beats_random_init_under_dp_on_phantoms(tmp_path, monkeypatch):
    """The prior's point, measured: on phantom masses (400 patients, 32 px), a DP linear probe at
    ε = 4 per patient on a backbone pretrained on mammo-phantom processes (8000 images, 4 epochs;
    no file of the data set is read) scores far above the same probe on a random-init backbone.
    Two fresh secret-noise runs each (benchmarks/README.md has the measured scores)."""
    from dpmammo.data.phantoms import make_phantoms

    monkeypatch.setenv("DPMAMMO_CACHE", str(tmp_path / "cache"))
    root = make_phantoms(tmp_path / "data", n=400, seed=0, size=32)
    model = {"name": "cnn-small", "input_size": 32, "width": 8}
    pre = parse_config(PretrainConfig, {"data": {"kinds": ["mammo-phantom"], "n": 8000, "n_val": 64, "seed": 3},
                                        "model": model, "train": {"epochs": 4, "batch_size": 64, "device": "cpu"}}, "t")
    pretrain(pre, tmp_path / "prior", progress=False)
    scores: dict[str, list[float]] = {"prior": [], "random": []}
    for rep in range(2):
        for start in scores:
            cfg = {"data": {"root": str(root), "train": ["phantom/train"], "val": "phantom/val"},
                   "model": model | {"freeze_backbone": True}, "optim": {"name": "sgd", "lr": 0.5},
                   "train": {"epochs": 10, "batch_size": 32, "seed": rep, "select": "last", "device": "cpu"},
                   "privacy": {"target_epsilon": 4.0, "delta": 1e-3}}
            if start == "prior":
                cfg |= {"init_from": str(tmp_path / "prior"), "init_weights": "backbone"}
            metrics = fit(TrainConfig.model_validate(cfg), tmp_path / f"{start}{rep}", progress=False)
            scores[start].append(metrics["val"]["auroc"])
            assert read_privacy(tmp_path / f"{start}{rep}" / "privacy.json").total.epsilon <= 4.0
    assert min(scores["prior"]) > max(scores["random"]) + 0.05, scores
    assert np.mean(scores["prior"]) > 0.75, scores
