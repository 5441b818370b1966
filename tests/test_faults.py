"""Fault injection over the commands a user runs: a full disk, permission errors, a truncated
checkpoint, a killed process. Each ends in one line (exit 2) or is recovered on the next run, and
no file that existed before changed (SHA-256 of every file, before and after).

A full disk is a writer that raises ENOSPC once a byte budget is spent (Python's file objects,
patched in-process), or the kernel's own limit on file size (RLIMIT_FSIZE: EFBIG) for the real
command in a subprocess. Permission errors are patched too: the tests may run as root.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import stopped_after_first_checkpoint
from tests.test_bad_inputs import (REPO, Ctx, assert_one_line_error, ctx, digest, invoke,  # noqa: F401
                                   run_cli, runs)


def tree(*folders: Path) -> dict:
    return {str(f): digest(f) for f in folders}


class _Budget:
    """File objects whose writes spend a shared byte budget, then raise ENOSPC (as a full disk)."""

    def __init__(self, left: int, under: Path):
        self.left, self.under, self.real_open = left, under.resolve(), builtins.open

    def open(self, file, mode="r", *args, **kwargs):
        f = self.real_open(file, mode, *args, **kwargs)
        if isinstance(file, int) or not any(m in mode for m in "wax+"):
            return f
        if not Path(os.path.abspath(file)).is_relative_to(self.under):
            return f
        return _Spending(f, self, str(file))


class _Spending:
    def __init__(self, f, budget: _Budget, name: str):
        self._f, self._budget, self._name = f, budget, name

    def write(self, data):
        self._budget.left -= len(data)
        if self._budget.left < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._name)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def full_disk(monkeypatch, under: Path, left: int = 0) -> None:
    budget = _Budget(left, under)
    monkeypatch.setattr(builtins, "open", budget.open)
    monkeypatch.setattr(io, "open", budget.open)


def denied(monkeypatch, folder: Path) -> None:
    """Every write under `folder` fails with EACCES, as in a folder the user may not write to."""
    folder = folder.resolve()
    err = lambda p: PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))  # noqa: E731
    inside = lambda p: isinstance(p, (str, os.PathLike)) and Path(os.path.abspath(p)).is_relative_to(folder)  # noqa: E731
    real_open, real_mkdir, real_os_open = builtins.open, os.mkdir, os.open

    def open_(file, mode="r", *a, **k):
        if inside(file) and any(m in mode for m in "wax+"):
            raise err(file)
        return real_open(file, mode, *a, **k)

    def mkdir(path, *a, **k):
        if inside(path):
            raise err(path)
        return real_mkdir(path, *a, **k)

    def os_open(path, flags, *a, **k):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise err(path)
        return real_os_open(path, flags, *a, **k)

    for mod, name, fn in ((builtins, "open", open_), (io, "open", open_), (os, "mkdir", mkdir), (os, "open", os_open)):
        monkeypatch.setattr(mod, name, fn)


# ---------------------------------------------------------------- a full disk

def test_sample_on_a_full_disk_leaves_nothing(ctx, monkeypatch):
    out = ctx.tmp / "s"
    before = tree(ctx.tmp, ctx.gan)
    full_disk(monkeypatch, ctx.tmp, left=3000)  # a few PNGs fit, then the disk is full
    r = invoke("gan", "sample", ctx.gan, "--out", out, "--n", "40")
    assert_one_line_error(r.code, r.stderr, "No space left on device (the disk is full; free some space)")
    assert tree(ctx.tmp, ctx.gan) == before and not out.exists()


def test_evaluate_on_a_full_disk_keeps_the_last_evaluation_whole(ctx, monkeypatch):
    run = ctx.tmp / "run"
    shutil.copytree(ctx.clf, run)
    assert invoke("evaluate", run, "--on", "phantom/test").code == 0
    before = tree(ctx.tmp)
    full_disk(monkeypatch, run, left=1000)  # the ROC PNG does not fit
    r = invoke("evaluate", run, "--on", "phantom/test")
    assert_one_line_error(r.code, r.stderr, "No space left on device")
    assert tree(ctx.tmp) == before


def test_force_over_a_finished_run_on_a_full_disk_keeps_the_run(ctx, monkeypatch):
    run = ctx.tmp / "run"
    shutil.copytree(ctx.clf, run)
    cfg = ctx.train_yaml()
    before = tree(ctx.tmp)
    full_disk(monkeypatch, run, left=0)
    r = invoke("train", cfg, "--out", run, "--force", "--set", "train.seed=3")
    assert_one_line_error(r.code, r.stderr, "No space left on device")
    assert tree(ctx.tmp) == before


def test_a_checkpoint_on_a_full_disk_is_one_line_and_leaves_the_folder_as_it_was(ctx, monkeypatch):
    """The disk fills while the first checkpoint is written (torch's own writer would raise a
    RuntimeError: a traceback); the refused start is undone."""
    cfg = ctx.train_yaml()
    before = tree(ctx.tmp)
    full_disk(monkeypatch, ctx.tmp / "run", left=20_000)  # config and log fit, the checkpoint does not
    r = invoke("train", cfg, "--out", ctx.tmp / "run", "--set", "train.epochs=2", "--set", "train.checkpoint_every_s=0")
    assert_one_line_error(r.code, r.stderr, "No space left on device")
    assert tree(ctx.tmp) == before


def _limited(max_bytes: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return preexec


def test_evaluate_past_the_kernels_file_size_limit_is_one_line(ctx):
    """The real command, with the kernel refusing the ROC PNG (EFBIG): before, a traceback and a
    0-byte or cut PNG inside the finished run."""
    run = ctx.tmp / "run"
    shutil.copytree(ctx.clf, run)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], env=env, check=True)  # its cache, first
    before = tree(ctx.tmp)
    r = subprocess.run([sys.executable, "-m", "dpmammo.cli", "evaluate", str(run), "--on", "phantom/test"],
                       capture_output=True, text=True, env=env, cwd=ctx.tmp, timeout=300, preexec_fn=_limited(4096))
    assert_one_line_error(r.returncode, r.stderr, "File too large")
    after = tree(ctx.tmp)
    assert after == before, "a file appeared or changed"


# ---------------------------------------------------------------- permissions

@pytest.mark.parametrize("command", [
    lambda c, d: ["train", c.train_yaml(), "--out", d / "run"],
    lambda c, d: ["gan", "sample", c.gan, "--out", d / "s", "--n", "4"],
    lambda c, d: ["data", "index", c.root, "-o", d / "m.csv"],
    lambda c, d: ["data", "phantoms", d / "ph", "--n", "4", "--size", "32"],
], ids=["train", "gan-sample", "index", "phantoms"])
def test_permission_denied_is_one_line(ctx, monkeypatch, command):
    locked = ctx.tmp / "locked"
    locked.mkdir()
    (locked / "theirs.txt").write_text("not yours")
    args = command(ctx, locked)
    before = tree(ctx.tmp, ctx.gan)
    denied(monkeypatch, locked)
    r = invoke(*args)
    assert_one_line_error(r.code, r.stderr, "Permission denied")
    assert tree(ctx.tmp, ctx.gan) == before


# ---------------------------------------------------------------- truncated files

def _interrupted_run(c: Ctx, monkeypatch) -> Path:
    from dpmammo.config import load_config
    from dpmammo.train import TrainConfig, fit

    with stopped_after_first_checkpoint(monkeypatch):
        fit(load_config(TrainConfig, c.train_yaml(), ["train.epochs=3", "train.checkpoint_every_s=0"]),
            c.tmp / "run", progress=False)
    return c.tmp / "run"


def test_truncated_checkpoint_on_resume_is_one_line_and_changes_nothing(ctx, monkeypatch):
    run = _interrupted_run(ctx, monkeypatch)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[:len(data) // 2])
    cfg = ctx.train_yaml()
    before = tree(ctx.tmp)
    r = invoke("train", cfg, "--out", run, "--set", "train.epochs=3", "--set",
               "train.checkpoint_every_s=0")
    assert_one_line_error(r.code, r.stderr, "it is truncated or corrupt")
    assert tree(ctx.tmp) == before  # log.txt not even appended to


# ---------------------------------------------------------------- killed processes

KILL_AT_NTH = """
import os, signal, sys
import {module} as m
real, calls = m.{attr}, [0]
def killed(*a, **k):
    calls[0] += 1
    if calls[0] == {n}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
m.{attr} = killed
from dpmammo.cli import main
sys.argv = ["dpmammo", *sys.argv[1:]]
main()
"""


def run_killed(c: Ctx, module: str, attr: str, n: int, *args) -> subprocess.CompletedProcess:
    """The command, SIGKILLed at the n-th call of module.attr."""
    code = KILL_AT_NTH.format(module=module, attr=attr, n=n)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=c.tmp, timeout=300)


def test_a_killed_sampler_leaves_no_folder_and_the_next_one_cleans_up(ctx):
    out = ctx.tmp / "s"
    r = run_killed(ctx, "PIL.Image", "Image.save", 5, "gan", "sample", ctx.gan, "--out", out, "--n", "20")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists()  # before: a folder of 4 PNGs and no manifest
    assert run_cli("gan", "sample", ctx.gan, "--out", out, "--n", "20").returncode == 0
    assert len(list(out.glob("*.png"))) == 20 and (out / "provenance.json").is_file()
    assert [p.name for p in ctx.tmp.iterdir() if p.name.startswith(".s")] == []


def test_a_killed_forced_training_gives_the_replaced_run_back(ctx):
    """`train --force` over a finished run, killed before its first checkpoint: the next command on
    that folder finds the finished run exactly as it was (before: gone)."""
    run = ctx.tmp / "run"
    shutil.copytree(ctx.clf, run)
    before = digest(run)
    r = run_killed(ctx, "dpmammo.train.loop", "load_images", 1, "train", ctx.train_yaml(), "--out", run, "--force",
                   "--set", "train.seed=5")
    assert r.returncode == -signal.SIGKILL, r.stderr
    r = invoke("train", ctx.train_yaml(), "--out", run)
    assert_one_line_error(r.code, r.stderr, "already holds a finished run")
    assert digest(run) == before
