"""Training on phantoms: it learns, DP spends at most its budget, resume is exact, bad input refused."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from dpmammo.config import parse_config
from dpmammo.errors import DpMammoError
from dpmammo.privacy import read_privacy
from dpmammo.train import TrainConfig, fit
from dpmammo.runs import RunDir
from tests.conftest import no_unit_count, stopped_after_first_checkpoint
from tests.test_privacy import dp_accounting_epsilon

SEEDED = {"seeded_noise_for_tests": True}


def phantom_config(root, **over) -> TrainConfig:
    d = {
        "data": {"root": str(root), "train": ["phantom/train"], "val": "phantom/val"},
        "model": {"name": "cnn-small", "input_size": 64, "width": 16},
        "optim": {"lr": 2e-3},
        "train": {"epochs": 15, "batch_size": 32, "seed": 0},
    }
    for key, value in over.items():
        section, name = key.split("__")
        d.setdefault(section, {})
        if name:
            d[section][name] = value
        else:
            d[section] = value
    return parse_config(TrainConfig, d, "test")


def test_non_private_cnn_learns_phantoms(phantom_root, tmp_path):
    m = fit(phantom_config(phantom_root), tmp_path / "run", progress=False)
    assert m["val"]["auroc"] >= 0.9
    total = read_privacy(tmp_path / "run" / "privacy.json").total
    assert total.guarantee == "none" and total.reason == "non-private" and total.epsilon is None
    assert "epsilon" not in m and all("loss" in row for row in m["history"])


def test_dp_cnn_learns_phantoms_within_budget(phantom_root, tmp_path):
    # Seeded (test-only) noise makes the utility bar deterministic; the guarantee path of secret
    # noise is tested in test_guarantees.py and below.
    cfg = phantom_config(phantom_root, privacy__={"target_epsilon": 8.0, "delta": 1e-4, **SEEDED},
                         train__epochs=20, train__batch_size=100, optim__lr=5e-3)
    m = fit(cfg, tmp_path / "run", progress=False)
    rec = read_privacy(tmp_path / "run" / "privacy.json")
    p = rec.own
    assert m["val"]["auroc"] >= 0.75
    assert p.epsilon <= 8.0 and p.unit == "patient"
    # Phantom patients have one patch each: 400 units, counted with noise (σ_N = 20) for the rate.
    assert p.steps == round(20 / p.sample_rate) and abs(100 / p.sample_rate - 400) < 4 * 20
    assert p.unit_count_noise == 20.0 and no_unit_count(tmp_path / "run" / "privacy.json")
    # The recorded ε is what an independent accountant computes from the recorded parameters.
    theirs = dp_accounting_epsilon(p.noise_multiplier, p.sample_rate, p.steps, p.delta, count_noise=20.0)
    assert p.epsilon == pytest.approx(theirs, rel=0.01)
    assert rec.total.guarantee == "none" and rec.total.reason == "seeded-noise"
    # Nothing computed from private batches without noise is released: no training loss.
    assert all("loss" not in row for row in m["history"]) and any("not recorded" in n for n in rec.notes)
    assert "loss" not in (tmp_path / "run" / "log.txt").read_text()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_dp_cnn_with_weight_standardization_trains_on_phantoms(phantom_root, tmp_path):
    """A few DP steps of cnn-small with weight-standardised convs (De et al. 2022), clipped by
    book-keeping through its registered grad sampler (exactness: tests/test_fast_dp.py)."""
    cfg = phantom_config(phantom_root, model__={"name": "cnn-small", "input_size": 32, "width": 8,
                                                "weight_standardization": True},
                         privacy__={"target_epsilon": 8.0, **SEEDED}, train__epochs=4, train__batch_size=100,
                         optim__lr=5e-3)
    m = fit(cfg, tmp_path / "run", progress=False)
    p = read_privacy(tmp_path / "run" / "privacy.json").own
    assert 0 < p.epsilon <= 8.0 and p.steps == round(4 / p.sample_rate)
    assert "DP-SGD (bookkeeping" in (tmp_path / "run" / "log.txt").read_text()
    assert m["val"]["auroc"] >= 0.6


def test_dp_linear_head_on_scatter_features_learns_phantoms(phantom_root, tmp_path):
    """ScatterNet features (Tramèr & Boneh 2021) computed once into the feature cache, then a DP
    linear head: the backbone has no parameters, so the run's weights are the head alone."""
    cfg = phantom_config(phantom_root, model__={"name": "scatter", "input_size": 64, "J": 2, "pool": 4},
                         privacy__={"target_epsilon": 8.0, **SEEDED}, train__epochs=3, train__batch_size=100,
                         optim__lr=0.5, train__augment="none")
    m = fit(cfg, tmp_path / "run", progress=False)
    rec = read_privacy(tmp_path / "run" / "privacy.json")
    assert 0 < rec.own.epsilon <= 8.0 and rec.own.unit == "patient" and rec.own.steps == round(3 / rec.own.sample_rate)
    assert rec.total.guarantee == "none" and rec.total.reason == "seeded-noise"
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "features: computed (400, 1, 1296)" in log and "DP-SGD (bookkeeping" in log
    assert set(load_file(str(tmp_path / "run" / "model.safetensors"))) == {"head.weight", "head.bias"}
    assert m["val"]["auroc"] >= 0.8


def test_dp_noise_is_secret_unless_the_test_switch_is_on(phantom_root, tmp_path):
    """Same config and seed: secret noise gives different weights; the seeded switch repeats exactly
    and its run is reported as having no guarantee."""
    def weights(name, **privacy):
        cfg = phantom_config(phantom_root, privacy__={"target_epsilon": 4.0, **privacy}, train__epochs=1)
        fit(cfg, tmp_path / name, progress=False)
        return load_file(tmp_path / name / "model.safetensors")

    a, b = weights("a"), weights("b")
    assert max((a[k] - b[k]).abs().max().item() for k in a) > 1e-4
    c, d = weights("c", **SEEDED), weights("d", **SEEDED)
    assert all(torch.equal(c[k], d[k]) for k in c)
    total = read_privacy(tmp_path / "c" / "privacy.json").total
    assert total.guarantee == "none" and total.reason == "seeded-noise"
    assert "no guarantee (seeded noise" in read_privacy(tmp_path / "c" / "privacy.json").describe()


def test_virtual_batches_match_one_physical_batch(phantom_root, tmp_path):
    """Splitting the logical batch into physical chunks must not change the update."""
    base = dict(privacy__={"target_epsilon": 4.0, **SEEDED}, train__epochs=1, train__batch_size=64)
    fit(phantom_config(phantom_root, **base, train__physical_batch_size=256), tmp_path / "a", progress=False)
    fit(phantom_config(phantom_root, **base, train__physical_batch_size=16), tmp_path / "b", progress=False)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def interrupt_after_first_epoch(monkeypatch, cfg, out) -> dict:
    """Train `cfg` into `out` until its first checkpoint, then stop as Ctrl-C would; returns that checkpoint."""
    with stopped_after_first_checkpoint(monkeypatch):
        fit(cfg, out, progress=False)
    assert not (out / "metrics.json").exists()
    return torch.load(out / "checkpoint.pt", weights_only=False)


def test_interrupted_run_resumes_to_identical_weights(phantom_root, tmp_path, monkeypatch):
    """Secret draws are addressed by step: with the (test-only) seeded key, a resumed run ends
    bit-identical to an uninterrupted one; the checkpoint holds the step counts, never a key."""
    cfg = phantom_config(phantom_root, privacy__={"target_epsilon": 4.0, **SEEDED}, train__epochs=3,
                         train__checkpoint_every_s=0)
    fit(cfg, tmp_path / "straight", progress=False)
    ckpt = interrupt_after_first_epoch(monkeypatch, cfg, tmp_path / "resumed")
    assert set(ckpt) == {"state", "parts", "accountant_history", "dp_draws", "rate_units", "gen", "torch_rng"}
    steps = sum(s for _, _, s in ckpt["accountant_history"])
    assert ckpt["dp_draws"] == {"sample": steps, "noise": steps} and steps > 0
    m = fit(cfg, tmp_path / "resumed", progress=False)
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    pa, pb = (read_privacy(tmp_path / d / "privacy.json").own for d in ("straight", "resumed"))
    assert pb.steps == pa.steps and pb.epsilon == pytest.approx(pa.epsilon)
    assert len(m["history"]) == 3


def test_interrupted_secret_run_keeps_no_key_on_disk_and_resumes_with_its_whole_spend(phantom_root, tmp_path,
                                                                                      monkeypatch):
    """With secret noise, no byte of the stage's 256-bit key is in the checkpoint; the resumed run draws
    a fresh key and still accounts every step, before and after the interruption, once."""
    from dpmammo.privacy import secret

    keys = []
    real_token_bytes = secret.secrets.token_bytes
    monkeypatch.setattr(secret.secrets, "token_bytes", lambda n: keys.append(real_token_bytes(n)) or keys[-1])
    cfg = phantom_config(phantom_root, privacy__={"target_epsilon": 4.0}, train__epochs=3, train__checkpoint_every_s=0)
    ckpt = interrupt_after_first_epoch(monkeypatch, cfg, tmp_path / "run")
    raw = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    assert len(keys) == 1 and len(keys[0]) == 32 and keys[0] not in raw
    fit(cfg, tmp_path / "run", progress=False)
    assert len(keys) == 2 and keys[1] != keys[0]  # the resume drew a fresh key
    own = read_privacy(tmp_path / "run" / "privacy.json").own
    assert own.guarantee == "dp" and own.steps == round(3 / own.sample_rate) and own.epsilon <= 4.0
    assert own.sample_rate == pytest.approx(32 / ckpt["rate_units"])  # the count was released once, then reused


def test_finished_run_is_not_overwritten(phantom_root, tmp_path):
    cfg = phantom_config(phantom_root, train__epochs=1)
    fit(cfg, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(DpMammoError, match="already holds a finished run"):
        fit(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("over,message", [
    ({"privacy__": {"target_epsilon": 0}}, "target_epsilon: Input should be greater than 0"),
    ({"privacy__": {"target_epsilon": "inf"}}, "drop the privacy block for non-private training"),
    ({"privacy__": {"target_epsilon": 1, "unit": "hospital"}}, "privacy.unit: Input should be 'patient' or 'patch'"),
    ({"privacy__": {"target_epsilon": 1, "delta": 0}}, "delta: Input should be greater than 0"),
    ({"model__": {"name": "resnet"}}, "does not match any of the expected tags: 'cnn-small', 'swin_t'"),
    ({"train__epochz": 3}, "train.epochz: unknown key"),
    ({"optim__momentum": 0.9}, "momentum applies to sgd only"),
    # features invariant to the flips: 4 flip views would repeat them (at 8 transforms each)
    ({"model__": {"name": "scatter", "input_size": 32, "pool": 2, "symmetrize": "dihedral"}},
     "the same in every flip; set train.augment: none and train.test_flips: false"),
    ({"model__": {"name": "scatter", "input_size": 32, "pool": 2, "symmetrize": "dihedral"},
      "train__augment": "none", "train__test_flips": True}, "same in every flip; set train.augment: none"),
])
def test_bad_config_is_refused_with_the_key_named(phantom_root, over, message):
    with pytest.raises(DpMammoError, match=message):
        phantom_config(phantom_root, **over)


def test_delta_at_or_above_one_over_n_is_refused_before_training(phantom_root, tmp_path):
    cfg = phantom_config(phantom_root, privacy__={"target_epsilon": 1, "delta": 1 / 400})
    with pytest.raises(DpMammoError, match=r"delta=0.0025 must be in \(0, 1/N\)"):
        fit(cfg, tmp_path / "run", progress=False)
    # A refused start leaves nothing behind, so the corrected command is not "another config".
    assert not (tmp_path / "run").exists()
    fit(phantom_config(phantom_root, privacy__={"target_epsilon": 1, "delta": 1e-4}, train__epochs=1),
        tmp_path / "run", progress=False)



def test_two_processes_cannot_train_into_one_directory(phantom_root, tmp_path):
    """The run directory is locked while a process trains into it (flock: gone when that process dies)."""
    import fcntl
    import os

    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process holds the directory
    try:
        with pytest.raises(DpMammoError, match="another dpmammo process is training into"):
            fit(phantom_config(phantom_root, train__epochs=1), run, progress=False)
    finally:
        os.close(fd)
    assert list(run.iterdir()) == []  # the refused start wrote nothing
    fit(phantom_config(phantom_root, train__epochs=1), run, progress=False)
    assert (run / "metrics.json").is_file()


ALLOC_PROBE = """
import resource, torch
from dpmammo.allocator import keep_freed_memory
kept = keep_freed_memory()
torch.set_num_threads(1)
w = torch.randn(256, 256)
faults = []
for _ in range(6):  # a training step in small: 4 MB activations, then three 48 MB tensors
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    h = [torch.randn(4096, 256)]
    for _ in range(8):
        h.append(torch.relu(h[-1] @ w))
    big = [torch.ones(12 * 2**20) for _ in range(3)]
    del h, big
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, sum(faults[1:]))
"""


def test_freed_memory_is_reused_without_page_faults():
    """With keep_freed_memory (what the dpmammo command does first), the memory of one step is
    reused by the next. DPMAMMO_KEEP_FREED_MEMORY=0 leaves glibc as it is, which maps every block
    over 32 MB anew and page-faults it in again at each step (measured here: ~53k faults per step
    against 0–12k)."""
    import subprocess
    import sys

    def probe(keep: str) -> tuple[str, int]:
        env = {**os.environ, "DPMAMMO_KEEP_FREED_MEMORY": keep}
        out = subprocess.run([sys.executable, "-c", ALLOC_PROBE], env=env, capture_output=True, text=True, timeout=120)
        kept, faults = out.stdout.split()
        return kept, int(faults)

    kept, faults = probe("1")
    untouched, default_faults = probe("0")
    assert kept == "True" and untouched == "False"
    assert faults * 4 <= default_faults, (faults, default_faults)


def test_parameter_ema_averages_the_iterates_with_warm_up():
    from dpmammo.train.ema import ParameterEMA

    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    ema = ParameterEMA(layer, decay=0.9)
    expected = torch.zeros(1, 2)
    for t, value in enumerate([1.0, 2.0, 3.0], start=1):
        with torch.no_grad():
            layer.weight.fill_(value)
        ema.update(layer)
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * value
    assert torch.allclose(ema.shadow["weight"], expected)
    with ema.applied(layer):
        assert torch.allclose(layer.weight, expected)
    assert torch.equal(layer.weight, torch.full((1, 2), 3.0))  # its own weights are back


def test_dp_run_with_ema_scores_the_average_and_spends_the_same(phantom_root, tmp_path):
    """The average is post-processing: the same steps and ε as without it; every epoch scores both."""
    base = dict(privacy__={"target_epsilon": 4.0, **SEEDED}, train__epochs=2)
    plain = fit(phantom_config(phantom_root, **base), tmp_path / "plain", progress=False)
    ema = fit(phantom_config(phantom_root, **base, train__ema_decay=0.9), tmp_path / "ema", progress=False)
    assert all("val_auroc_ema" in row for row in ema["history"]) and ema["val"]["weights"] in ("weights", "average")
    assert [r["val_auroc"] for r in ema["history"]] == [r["val_auroc"] for r in plain["history"]]  # same iterates
    pa, pb = (read_privacy(tmp_path / d / "privacy.json").own for d in ("plain", "ema"))
    assert (pa.steps, pa.epsilon, pa.noise_multiplier) == (pb.steps, pb.epsilon, pb.noise_multiplier)
    chosen = max(max(r["val_auroc"], r["val_auroc_ema"]) for r in ema["history"])
    assert ema["val"]["auroc"] == chosen
