"""One DP training over two CPU processes (gloo): sensitivity, sampling and noise across ranks, the
2-process run against the 1-process run, and a rank killed mid-run.

The mechanism tests run in one launch of two real processes (dpmammo.distributed.launch): each
rank runs `_mechanism_checks` and writes what it saw; the test reads both ranks' files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from scipy.stats import binomtest
from torch import nn

from dpmammo import distributed
from dpmammo.privacy import make_private
from dpmammo.privacy.config import PrivacyConfig
from dpmammo.privacy.sampling import Batch, PoissonUnits
from dpmammo.privacy.secret import SecretKey
from dpmammo.train.loop import train_step

MODES = ("bookkeeping", "ghost", "hooks")  # every mode `auto` can pick
CLIP = 0.1
SIGMA = 1.0
N_UNITS, Q, STEPS = 40, 0.25, 400  # the sampling check


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 2))


def _records(patient_unit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """20 records: a patient with 14 near-identical patches, numbered unit `patient_unit`, and six
    one-patch patients; (x, y, unit of each record)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 1, 16, 16, generator=g)
    x[:14] = x[0] + 0.01 * torch.rand(14, 1, 16, 16, generator=g)
    y = torch.cat([torch.ones(14, dtype=torch.long), torch.randint(0, 2, (6,), generator=g)])
    others = [u for u in range(7) if u != patient_unit]
    return x, y, torch.tensor([patient_unit] * 14 + others)


def _private(model: nn.Module, units: torch.Tensor, expected: int, mode: str, unit: str, ranks, *, clip=CLIP):
    """make_private over this rank's share of a sampler drawing every unit (q = 1)."""
    sampler = PoissonUnits(units, expected, SecretKey.for_tests(0), shard=(ranks.rank, ranks.world))
    params = [p for p in model.parameters() if p.requires_grad]
    return make_private(model=model, optimizer=torch.optim.SGD(params, lr=0.0), sampler=sampler, epochs=1,
                        config=PrivacyConfig(target_epsilon=10.0, delta=1e-5, max_grad_norm=clip,
                                             grad_sample_mode=mode, unit=unit), world_size=ranks.world)


def _clipped_sum(mode: str, unit: str, patient_unit: int, with_patient: bool, ranks) -> torch.Tensor:
    """The all-reduced sum of clipped unit gradients of one step over every unit (noise off)."""
    x, y, units = _records(patient_unit)
    keep = torch.arange(20) if with_patient else torch.arange(14, 20)
    x, y, units = x[keep], y[keep], torch.unique(units[keep], return_inverse=True)[1]
    if unit == "patch":
        units = torch.arange(len(keep))
    n_units = int(units.max()) + 1
    model = _tiny_cnn()
    dp = _private(model, units, n_units, mode, unit, ranks)  # q = 1: every unit, on its rank
    dp.optimizer.noise_multiplier = 0.0
    # Opacus divides the sum by the expected batch (n_units) on every rank and by the ranks after the sum.
    return _one_step(dp, dp.sampler.next_batch(), x, y) * n_units


def _one_step(dp, batch: Batch, x, y) -> torch.Tensor:
    """One logical step through the training loop's own step function; returns the gradient the
    wrapped optimizer steps with (the all-reduced, noised, scaled sum)."""
    seen = []
    inner = dp.optimizer.original_optimizer
    real_step = inner.step

    def step(*args, **kwargs):
        seen.append(torch.cat([p.grad.flatten() for p in dp.optimizer.params]).clone())
        return real_step(*args, **kwargs)

    inner.step = step
    train_step(dp.model, dp, batch, x[batch.idx], y[batch.idx], 64, "cpu")
    inner.step = real_step
    assert len(seen) == 1, "one optimizer step per logical step"
    return seen[0]


def _mechanism_checks(out: str) -> None:
    """Runs on each rank of a 2-process group; writes rank<r>.pt."""
    ranks = distributed.current()
    seen: dict = {"sensitivity": {}, "sampling": [], "noise": []}
    for mode in MODES:
        for patient_unit in (0, 1):  # the 14-patch patient on rank 0, then on rank 1
            for unit in ("patient", "patch"):
                moved = (_clipped_sum(mode, unit, patient_unit, True, ranks)
                         - _clipped_sum(mode, unit, patient_unit, False, ranks)).norm().item()
                seen["sensitivity"][(mode, patient_unit, unit)] = moved

    # Sampling: this rank's share of STEPS Poisson draws of N_UNITS one-record units at rate Q.
    # Rank 0's key reaches rank 1 through share_key (rank 1 passes None).
    key = ranks.share_key(SecretKey.for_tests(1) if ranks.is_main else None)
    sampler = PoissonUnits(torch.arange(N_UNITS), int(Q * N_UNITS), key, shard=(ranks.rank, ranks.world))
    seen["sampling"] = [sampler.next_batch().idx.tolist() for _ in range(STEPS)]
    one_process = PoissonUnits(torch.arange(N_UNITS), int(Q * N_UNITS), SecretKey.for_tests(1))
    seen["one_process"] = [one_process.next_batch().idx.tolist() for _ in range(STEPS)]

    # Noise: all-noise steps (every rank's share empty) of a 2002-parameter model, σ = 1, C = 1.
    head = nn.Linear(1000, 2)
    dp = _private(head, torch.arange(8), 1, "bookkeeping", "patch", ranks, clip=1.0)
    dp.optimizer.noise_multiplier = SIGMA
    for _ in range(5):
        for p in dp.optimizer.params:
            p.grad = torch.zeros_like(p)
        dp.optimizer.step()  # the all-noise step of an empty batch (what DPSetup.step_empty releases)
        seen["noise"].append(torch.cat([p.grad.flatten() for p in dp.optimizer.params]).clone())
        dp.optimizer.zero_grad(set_to_none=True)
    torch.save(seen, Path(out) / f"rank{ranks.rank}.pt")


@pytest.fixture(scope="module")
def mechanism(tmp_path_factory) -> list[dict]:
    """What each of the two ranks saw in `_mechanism_checks`."""
    out = tmp_path_factory.mktemp("ranks")
    distributed.launch(_mechanism_checks, (str(out),), 2, "cpu")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize("mode", MODES)
def test_one_patient_moves_the_all_reduced_clipped_sum_by_at_most_c(mechanism, mode):
    """Noise off: a 14-patch patient, on either rank, moves the all-reduced sum of clipped unit
    gradients by ≤ C at patient level, and by 10–14·C at patch level (each patch clipped alone)."""
    for patient_unit in (0, 1):
        for rank in (0, 1):  # every rank holds the same all-reduced step
            moved = mechanism[rank]["sensitivity"][(mode, patient_unit, "patient")]
            assert 0 < moved <= CLIP * (1 + 1e-4), (mode, patient_unit, rank, moved)
            moved = mechanism[rank]["sensitivity"][(mode, patient_unit, "patch")]
            assert 10 * CLIP <= moved <= 14 * CLIP * (1 + 1e-4), (mode, patient_unit, rank, moved)


def test_each_unit_is_sampled_once_per_step_at_rate_q(mechanism):
    """The ranks' shares are disjoint and together are the 1-process draw with the same key; the
    whole step holds q·N units on average (not per rank); each unit's inclusion count over the
    steps is binomial(STEPS, q): two-sided test at α = 0.001 per unit, at most one of the 40 units
    rejected (a rate of q/2 or 2q is rejected at every unit)."""
    shares = [mechanism[r]["sampling"] for r in (0, 1)]
    totals, counts = [], torch.zeros(N_UNITS)
    for a, b, whole in zip(*shares, mechanism[0]["one_process"]):
        assert sorted(a + b) == sorted(whole), "the ranks' shares are not the 1-process draw"
        assert not set(a) & set(b), "a unit sampled on both ranks in one step"
        assert all(u % 2 == 0 for u in a) and all(u % 2 == 1 for u in b), "a unit on the wrong rank"
        totals.append(len(a) + len(b))
        counts[a + b] += 1
    mean = sum(totals) / STEPS
    sd = (N_UNITS * Q * (1 - Q) / STEPS) ** 0.5
    assert abs(mean - Q * N_UNITS) < 4 * sd, f"{mean:.2f} units per step, expected {Q * N_UNITS}"
    rejected = sum(binomtest(int(c), STEPS, Q).pvalue < 1e-3 for c in counts)
    assert rejected <= 1, f"{rejected} units sampled at a rate other than q"


def test_the_noise_is_added_once(mechanism):
    """All-noise steps at σ = 1, C = 1: the noise on the summed gradient has std σ·C (1.0), not
    σ·C·√2 (1.41, both ranks adding noise); every rank holds the same step."""
    noise = torch.stack(mechanism[0]["noise"])
    torch.testing.assert_close(noise, torch.stack(mechanism[1]["noise"]))
    assert 0.97 < noise.std().item() < 1.03, noise.std().item()
    assert abs(noise.mean().item()) < 0.04
    assert not torch.equal(noise[0], noise[1]), "two steps drew the same noise"


def _config(root: Path, path: Path, **train) -> Path:
    """A small DP cnn-small run on phantoms; seeded noise, so that the 1- and 2-process runs draw
    the same batches and noise and can be compared run for run."""
    import yaml

    cfg = {"data": {"root": str(root), "train": ["phantom/train"], "val": "phantom/val"},
           "model": {"name": "cnn-small", "input_size": 32, "width": 8},
           "optim": {"name": "adamw", "lr": 0.003},
           "train": {"epochs": 3, "batch_size": 32, "seed": 0, "device": "cpu", **train},
           "privacy": {"target_epsilon": 4, "delta": 1e-4, "seeded_noise_for_tests": True}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _dpmammo(*args: str, cwd: Path, torchrun: bool = False) -> subprocess.Popen:
    exe = Path(sys.executable).parent
    cmd = ([str(exe / "torchrun"), "--nproc-per-node", "2", "--no-python"] if torchrun else []) + \
        [str(exe / "dpmammo"), *args]
    env = {**os.environ, "TMPDIR": str(cwd)}  # torchrun's scratch folders stay in the test's folder
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stages(run: Path) -> list[dict]:
    """privacy.json's stages without the run's own name."""
    stages = json.loads((run / "privacy.json").read_text())["stages"]
    return [{k: v for k, v in s.items() if k != "run"} for s in stages]


@pytest.mark.slow
def test_two_processes_train_the_one_process_run(phantom_root, tmp_path):
    """The same config over 1 process, 2 processes (--nproc) and 2 processes under torchrun: the
    same privacy record, the same val AUROC history (the same batches and noise: the sums differ
    only in float rounding), and (nearly) the same weights."""
    from safetensors.torch import load_file

    config = _config(phantom_root, tmp_path / "c.yaml")
    runs = {"one": [], "nproc": ["--nproc", "2"], "torchrun": []}
    for name, extra in runs.items():
        proc = _dpmammo("train", str(config), "--out", name, *extra, cwd=tmp_path, torchrun=name == "torchrun")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    one = tmp_path / "one"
    for name in ("nproc", "torchrun"):
        run = tmp_path / name
        assert _stages(run) == _stages(one)
        assert json.loads((run / "metrics.json").read_text())["processes"] == 2
        a = [h["val_auroc"] for h in json.loads((one / "metrics.json").read_text())["history"]]
        b = [h["val_auroc"] for h in json.loads((run / "metrics.json").read_text())["history"]]
        assert max(abs(x - y) for x, y in zip(a, b)) < 0.005, (a, b)
        wa, wb = load_file(one / "model.safetensors"), load_file(run / "model.safetensors")
        assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-3
        assert "one training over 2 processes (gloo)" in (run / "log.txt").read_text()


def _spawned_children(pid: int) -> list[int]:
    """The ranks a `--nproc` parent spawned (multiprocessing's spawn_main children), oldest first."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ..., starttime (22nd field)
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            found.append((int(fields[19]), int(proc.name)))
    return [p for _, p in sorted(found)]


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_cleanly_and_a_rerun_resumes(phantom_root, tmp_path):
    """SIGKILL one rank after the first checkpoint: the run exits ≠ 0 with one line, the checkpoint
    it leaves loads, and the same command resumes and finishes."""
    config = _config(phantom_root, tmp_path / "c.yaml", epochs=8, checkpoint_every_s=0)
    args = ("train", str(config), "--out", "run", "--nproc", "2")
    proc = _dpmammo(*args, cwd=tmp_path)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert checkpoint.is_file(), "no checkpoint within 2 minutes"
    ranks = _spawned_children(proc.pid)
    assert len(ranks) == 2
    os.kill(ranks[-1], signal.SIGKILL)  # the later one: rank 1
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "training over 2 processes failed" in lines[0] and "SIGKILL" in lines[0], err
    assert not (tmp_path / "run" / "metrics.json").exists()
    torch.load(checkpoint, weights_only=False)  # whole: written atomically by rank 0

    proc = _dpmammo(*args, cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "resumed after epoch" in log
    assert len(json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]) == 8
