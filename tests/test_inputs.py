"""Bad inputs of the issue "Nothing lost", by family: non-finite floats, integers that are not
integers (true, beyond 64 bits, negative seeds), YAML that repeats a key or expands by aliases,
test patients reaching training by another name, validation patients in training, a patch counted
twice, images that are too small or missing, a resume whose data changed, and the interrupted line.

Each refusal is exit code 2, exactly one line `error: ...` on stderr, no traceback, and no file
under the test's folder (data, configs, runs) changed, appeared or went.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from dpmammo.runs import RunDir
from tests.conftest import REPO, stopped_after_first_checkpoint
from tests.test_bad_inputs import assert_one_line_error, digest, invoke, run_cli


class Ctx:
    """A tiny phantom data root, a finished classifier run on it, and config files, all under `tmp`."""

    def __init__(self, tmp: Path, root: Path, clf: Path):
        self.tmp, self.root, self.clf = tmp, root, clf

    def text(self, name: str, content: str) -> Path:
        path = self.tmp / name
        path.write_text(content)
        return path

    def train_yaml(self, extra: str = "") -> Path:
        return self.text("c.yaml", f"data: {{root: {self.root}, train: [phantom/train], val: phantom/val}}\n"
                                   "model: {name: cnn-small, input_size: 32, width: 4}\n"
                                   "train: {epochs: 1, batch_size: 16, device: cpu}\n" + extra)

    def dp_yaml(self, extra: str = "") -> Path:
        return self.train_yaml("privacy: {target_epsilon: 3, delta: 1.0e-3}\n" + extra)

    def gan_yaml(self) -> Path:
        return self.text("gan.yaml", f"data: {{root: {self.root}, train: [phantom/train]}}\n"
                                     "model: {image_size: 16, g_width: 4, d_width: 4}\n"
                                     "train: {epochs: 1, batch_size: 16, sample_every: 0, device: cpu}\n")

    def study_yaml(self, extra: str = "") -> Path:
        return self.text("study.yaml", f"name: s\ndata_root: {self.root}\ntrain_set: phantom/train\n"
                                       "val_set: phantom/val\ntest_sets: [phantom/test]\nsynthetic: phantom/val\n"
                                       "conditions: [real]\nepsilons: [inf]\n"
                                       "model: {name: cnn-small, input_size: 32, width: 4}\n"
                                       "train: {epochs: 1, batch_size: 16, device: cpu}\n" + extra)

    @property
    def test_split(self) -> Path:
        return self.root / "phantom" / "test"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    """40 / 20 / 20 phantom patches at 32 px, and a finished one-epoch classifier on them."""
    from dpmammo.data.phantoms import make_phantoms
    from dpmammo.models import CnnSmallConfig
    from dpmammo.train import DataConfig, TrainConfig, TrainSettings, fit

    base = tmp_path_factory.mktemp("inputs")
    root = make_phantoms(base / "data", n=40, seed=0, size=32)
    fit(TrainConfig(data=DataConfig(root=root, train=["phantom/train"], val="phantom/val"),
                    model=CnnSmallConfig(input_size=32, width=4),
                    train=TrainSettings(epochs=1, batch_size=16, device="cpu")), base / "clf", progress=False)
    return root, base / "clf"


@pytest.fixture
def ctx(made, tmp_path_factory, monkeypatch) -> Ctx:
    """A private copy of the data and the run in a fresh folder (cases may edit them)."""
    import shutil

    tmp = tmp_path_factory.mktemp("case")
    shutil.copytree(made[0], tmp / "data")
    shutil.copytree(made[1], tmp / "clf")
    monkeypatch.chdir(tmp)  # a default output (runs/...) would land here, and show in the digest
    return Ctx(tmp, tmp / "data", tmp / "clf")


def edited_run(c: Ctx, old: str, new: str) -> Path:
    """The finished run with its config.yaml edited by hand."""
    config = c.clf / "config.yaml"
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new, 1))
    return c.clf


def tiny_png(path: Path, side: int) -> Path:
    Image.fromarray(np.full((side, side), 128, dtype=np.uint8)).save(path)
    return path


def one_pixel_patch(c: Ctx) -> Path:
    tiny_png(c.root / "phantom" / "train" / "is_benign_true" / "patientphantom__900_image1_mass1_is_benign_1.png", 1)
    return c.root


def dangling_link(c: Ctx) -> Path:
    link = c.root / "phantom" / "train" / "is_benign_true" / "patientphantom__901_image1_mass1_is_benign_1.png"
    os.symlink(c.tmp / "gone.png", link)
    return c.root


BOMB = "".join(f"{k}: &{k} [" + ",".join([f"*{p}" if p else '"lol"'] * 9) + "]\n"
               for k, p in zip("abcdefgh", ["", *"abcdefg"])) + "train: {seed: *h}\n"

# (id, arguments from the context, a fragment of the one error line)
CASES: list[tuple[str, Callable[[Ctx], list], str]] = [
    # -- non-finite floats, in every config and on the command line
    ("lr-inf", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "r", "--set", "optim.lr=.inf"],
     "optim.lr: Input should be a finite number (got inf)"),
    ("weight-decay-inf", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "r", "--set", "optim.weight_decay=.inf"],
     "optim.weight_decay: Input should be a finite number"),
    ("lr-nan", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "r", "--set", "optim.lr=.nan"],
     "optim.lr: Input should be a finite number (got nan)"),
    ("max-grad-norm-inf", lambda c: ["train", c.dp_yaml(), "--out", c.tmp / "r", "--set", "privacy.max_grad_norm=.inf"],
     "privacy.max_grad_norm: Input should be a finite number"),
    ("checkpoint-every-inf", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "r", "--set",
                                        "train.checkpoint_every_s=.inf"], "train.checkpoint_every_s: Input should be a finite"),
    ("gan-lr-inf", lambda c: ["gan", "train", c.gan_yaml(), "--out", c.tmp / "g", "--set", "optim.lr_g=.inf"],
     "optim.lr_g: Input should be a finite number"),
    ("study-max-grad-norm-nan", lambda c: ["study", c.study_yaml(), "--out", c.tmp / "s", "--set",
                                           "privacy.max_grad_norm=.nan"], "privacy.max_grad_norm: Input should be a finite"),
    # -- integers: not true/false, within 64 bits, seeds not negative
    ("epochs-true", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "r", "--set", "train.epochs=true"],
     "train.epochs: Input should be a number, not true/false"),
    ("seed-beyond-int64", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "r", "--set",
                                     "train.seed=99999999999999999999"], "train.seed: Input should fit in 64 bits"),
    ("batch-beyond-int64", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "r", "--set",
                                      "train.batch_size=99999999999999999999"], "train.batch_size: Input should fit in 64 bits"),
    ("seed-negative", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "r", "--set", "train.seed=-1"],
     "train.seed: Input should be greater than or equal to 0"),
    ("switch-one", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "r", "--set", "train.feature_cache=1"],
     "train.feature_cache: Input should be true or false (got 1)"),
    ("study-seeds-true", lambda c: ["study", c.study_yaml("seeds: [0, true]\n"), "--out", c.tmp / "s"],
     "seeds.1: Input should be a number, not true/false"),
    ("phantoms-seed-negative", lambda c: ["data", "phantoms", c.tmp / "p", "--seed", "-1"], "--seed -1: must be between 0"),
    ("phantoms-n-beyond-int64", lambda c: ["data", "phantoms", c.tmp / "p", "--n", "99999999999999999999"],
     "--n 99999999999999999999: must be at most 9223372036854775807"),
    ("phantoms-size-huge", lambda c: ["data", "phantoms", c.tmp / "p", "--size", "99999999999999999999"],
     "phantoms: size must be between 32 and 1024 px"),
    ("sample-seed-beyond-int64", lambda c: ["gan", "sample", c.tmp, "--out", c.tmp / "s", "--seed",
                                            "99999999999999999999"], "--seed 99999999999999999999: must be between 0"),
    ("sample-n-beyond-int64", lambda c: ["gan", "sample", c.tmp, "--out", c.tmp / "s", "--n", "99999999999999999999"],
     "--n 99999999999999999999: must be at most"),
    ("score-max-images-negative", lambda c: ["gan", "score", c.test_split, "--data-root", c.root, "--ref",
                                             "phantom/train", "--max-images", "-5"], "--max-images -5: must be between 10"),
    # -- YAML: repeated keys, aliases, what an error echoes
    ("repeated-section", lambda c: ["train", c.text("d.yaml", "train: {epochs: 2}\nmodel: {width: 4}\ntrain: {epochs: 3}\n")],
     "d.yaml: key 'train' is given twice in one mapping (lines 1 and 3); keep one"),
    ("repeated-key", lambda c: ["train", c.text("d.yaml", "train:\n  epochs: 2\n  seed: 1\n  epochs: 3\n")],
     "key 'epochs' is given twice in one mapping (lines 2 and 4)"),
    ("repeated-key-in-set", lambda c: ["train", c.train_yaml(), "--set", "train={epochs: 1, epochs: 2}"],
     "--set train={epochs: 1, epochs: 2}: key 'epochs' is given twice"),
    ("alias-bomb", lambda c: ["train", c.text("bomb.yaml", BOMB)], "bomb.yaml: alias *a at line 2: aliases are not allowed"),
    ("evaluate-edited-config-true", lambda c: ["evaluate", edited_run(c, "epochs: 1", "epochs: true"), "--on",
                                               "phantom/test"], "train.epochs: Input should be a number, not true/false"),
    ("evaluate-edited-config-broken", lambda c: ["evaluate", edited_run(c, "epochs: 1", "epochs: [1"), "--on",
                                                 "phantom/test"], "config.yaml: not valid YAML"),
    # -- test patients reaching training by a path, or by a study's own sets
    ("train-on-the-data-root", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "r", "--set", f"data.train=[{c.root}]"],
     "holds 20 patient(s) of test set phantom/test"),
    ("train-on-test-by-path", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "r", "--set",
                                         f"data.train=[{c.test_split}/.]"], "a model must not see test patients"),
    ("gan-on-the-data-root", lambda c: ["gan", "train", c.gan_yaml(), "--out", c.tmp / "g", "--set", f"data.train=[{c.root}]"],
     "a generator must not see test patients"),
    ("gan-on-test-by-path", lambda c: ["gan", "train", c.gan_yaml(), "--out", c.tmp / "g", "--set",
                                       f"data.train=[{c.test_split}/is_benign_true/..]"], "a generator must not see test patients"),
    ("study-tests-on-its-training-split", lambda c: ["study", c.study_yaml(), "--out", c.tmp / "s", "--set",
                                                     "test_sets=[phantom/train]"],
     "run real/epsinf/seed0: data.train: phantom/train holds 40 patient(s) of test set phantom/train"),
    ("study-synthetic-is-a-test-split", lambda c: ["study", c.study_yaml(), "--out", c.tmp / "s", "--set",
                                                   "synthetic=phantom/test", "--set", "conditions=[real, synthetic]"],
     "run synthetic/pretrain/seed0: data.train: phantom/test holds 20 patient(s) of test set phantom/test"),
    ("evaluate-on-the-training-split", lambda c: ["evaluate", c.clf, "--on", "phantom/test", "--on", "phantom/train"],
     "--on phantom/train: 40 of its patients are among the run's training patients"),
    ("evaluate-on-training-by-path", lambda c: ["evaluate", c.clf, "--on", f"{c.root}/phantom/train/."],
     "of its patients are among the run's training patients"),
    # -- validation patients in training; a patch counted twice
    ("dp-val-is-train", lambda c: ["train", c.dp_yaml(), "--out", c.tmp / "r", "--set", "data.val=phantom/train"],
     "data.val phantom/train shares 40 patient(s) with data.train"),
    ("val-is-train-by-path", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "r", "--set",
                                        f"data.val={c.root}/phantom/train"], "shares 40 patient(s) with data.train"),
    ("study-val-is-train", lambda c: ["study", c.study_yaml(), "--out", c.tmp / "s", "--set", "val_set=phantom/train"],
     "data.val phantom/train shares 40 patient(s)"),
    ("patch-unit-set-twice", lambda c: ["train", c.dp_yaml(), "--out", c.tmp / "r", "--set", "privacy.unit=patch",
                                        "--set", "data.train=[phantom/train, phantom/train]"],
     "data.train: phantom/train and phantom/train hold the same patches"),
    ("patch-unit-same-files-two-names", lambda c: ["train", c.dp_yaml(), "--out", c.tmp / "r", "--set", "privacy.unit=patch",
                                                   "--set", f"data.train=[phantom/train, {c.root}/phantom/train/.]"],
     "hold the same patches"),
    # -- images
    ("index-one-pixel-png", lambda c: ["data", "index", one_pixel_patch(c)],
     "patientphantom__900_image1_mass1_is_benign_1.png: only 1×1 pixels, below the 8×8"),
    ("train-one-pixel-png", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "r", "--set",
                                       f"data.root={one_pixel_patch(c)}"], "only 1×1 pixels"),
    ("index-dangling-link", lambda c: ["data", "index", dangling_link(c)],
     "patientphantom__901_image1_mass1_is_benign_1.png: a link to a missing file"),
    ("train-dangling-link", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "r", "--set",
                                       f"data.root={dangling_link(c)}"], "a link to a missing file"),
]


@pytest.mark.parametrize("make_args,fragment", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_refused_in_one_line_and_nothing_changes(ctx, make_args, fragment):
    args = make_args(ctx)
    before = digest(ctx.tmp)
    out = invoke(*args)
    assert_one_line_error(out.code, out.stderr, fragment)
    assert digest(ctx.tmp) == before


def test_case_ids_are_unique():
    assert len({c[0] for c in CASES}) == len(CASES)


def test_an_alias_bomb_or_a_huge_value_is_a_short_line(ctx):
    """Before: the 400-byte bomb expanded to 43 million values and an 8 MB error line."""
    assert len(BOMB) < 400
    out = invoke("train", ctx.text("bomb.yaml", BOMB))
    assert out.code == 2 and len(out.stderr) < 300, len(out.stderr)
    out = invoke("train", ctx.train_yaml(), "--set", "train.epochs=" + "9x" * 500_000)
    assert_one_line_error(out.code, out.stderr, "train.epochs: Input should be a valid integer")
    assert len(out.stderr) < 600, len(out.stderr)
    many = "[" + ", ".join(["x"] * 10_000) + "]"
    out = invoke("study", ctx.study_yaml(), "--set", f"seeds={many}")
    assert_one_line_error(out.code, out.stderr, "and 9995 more problems")
    assert len(out.stderr) < 1000, len(out.stderr)


def test_dp_record_says_selection_is_not_accounted(ctx):
    out = invoke("train", ctx.dp_yaml(), "--out", ctx.tmp / "dp")
    assert out.code == 0, out.stderr
    notes = json.loads((ctx.tmp / "dp" / "privacy.json").read_text())["notes"]
    assert any("model selection is not DP-accounted: the validation set phantom/val" in n for n in notes), notes
    metrics = json.loads((ctx.tmp / "dp" / "metrics.json").read_text())
    assert "without DP accounting" in metrics["selection"]


def test_resume_after_a_training_image_was_deleted_is_refused(ctx, monkeypatch):
    from dpmammo.config import load_config
    from dpmammo.train import TrainConfig, fit

    cfg = load_config(TrainConfig, ctx.train_yaml(), ["train.epochs=2", "train.checkpoint_every_s=0"])
    with stopped_after_first_checkpoint(monkeypatch):
        fit(cfg, ctx.tmp / "run", progress=False)
    assert RunDir(ctx.tmp / "run").checkpoint.is_file()
    gone = sorted((ctx.root / "phantom" / "train" / "is_benign_false").iterdir())[3]
    gone.unlink()
    before = digest(ctx.tmp)
    r = run_cli("train", ctx.train_yaml(), "--out", ctx.tmp / "run", "--set", "train.epochs=2",  # a fresh process
                "--set", "train.checkpoint_every_s=0")
    assert_one_line_error(r.returncode, r.stderr, f"cannot resume {ctx.tmp / 'run'}: {gone} is gone since the run was "
                                                "interrupted (1 file(s) of data.train changed)")
    assert digest(ctx.tmp) == before


def test_interrupted_line_prints(tmp_path):
    """Typer turned Ctrl-C into a silent exit 130; the real command now says so."""
    script = ("import sys, dpmammo.cli, dpmammo.data.phantoms as p\n"
              "def stop(*a, **k):\n    raise KeyboardInterrupt\n"
              "p.make_phantoms = stop\n"
              f"sys.argv = ['dpmammo', 'data', 'phantoms', {str(tmp_path / 'p')!r}]\n"
              "dpmammo.cli.main()\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.returncode == 130 and r.stderr == "interrupted\n", r.stderr
