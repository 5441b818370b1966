"""A corpus of bad inputs: each one is exit code 2 with one line on stderr, `error: ...`, naming
what is wrong, never a traceback, and a finished result it touches stays byte for byte the same.

Most cases run the CLI in-process (typer's CliRunner; a DpMammoError becomes the line `main()`
prints); the few that must prove it of the real command run it as a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dpmammo.cli import app, error_line
from dpmammo.errors import DpMammoError

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- running the CLI

@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def invoke(*args) -> Outcome:
    """The CLI in-process, as `main()` would end: a DpMammoError is its one line and exit 2."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(result.exception, DpMammoError):
        return Outcome(2, result.stdout, result.stderr + error_line(result.exception) + "\n")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # anything else is a bug: let pytest show its traceback
    return Outcome(result.exit_code, result.stdout, result.stderr)


def run_cli(*args, env: Optional[dict] = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The real command in a fresh interpreter (this repository first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "dpmammo.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)


def assert_one_line_error(code: int, stderr: str, fragment: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert fragment in lines[0], lines[0]


def digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` and its SHA-256: equal digests mean nothing changed or appeared."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- inputs

def write_png(path: Path, value: int = 128, size: int = 16, dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=dtype)).save(path)
    return path


def published(root: Path, split: str, patient: str, malignant: bool, i: int) -> Path:
    folder = "is_benign_false" if malignant else "is_benign_true"
    return root / "ds" / split / folder / f"patient{patient}_image{i}_mass{i}_is_benign_{0 if malignant else 1}.png"


def tiny_tree(root: Path) -> Path:
    """ds/train and ds/val, two patches per class, one patient per split and class."""
    for split, pid in (("train", "A"), ("val", "B")):
        for malignant in (True, False):
            for i in (1, 2):
                write_png(published(root, split, pid + ("m" if malignant else "b"), malignant, i), 60 + 40 * i)
    return root


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A well-formed PNG whose header declares width×height pixels (one row of data): a
    decompression bomb as Pillow sees it, without the memory to make a real one."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1))) + chunk(b"IEND", b""))
    return path


def truncated_png(path: Path) -> None:
    """A noisy 64 px PNG cut after a third of its bytes (inside its image data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])


@dataclass
class Ctx:
    """What the cases need: a phantom data root, finished classifier and GAN runs, a scratch dir."""

    root: Path
    clf: Path
    gan: Path
    tmp: Path

    def train_yaml(self, extra: str = "", name: str = "c.yaml") -> Path:
        path = self.tmp / name
        path.write_text(f"data: {{root: {self.root}, train: [phantom/train], val: phantom/val}}\n"
                        "model: {name: cnn-small, input_size: 32, width: 4}\n"
                        "train: {epochs: 1, batch_size: 32, device: cpu}\n" + extra)
        return path

    def gan_yaml(self, extra: str = "") -> Path:
        path = self.tmp / "gan.yaml"
        path.write_text(f"data: {{root: {self.root}, train: [phantom/train]}}\n"
                        "model: {image_size: 16, g_width: 4, d_width: 4}\n"
                        "train: {epochs: 1, batch_size: 32, sample_every: 0, device: cpu}\n" + extra)
        return path

    def text(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def study_yaml(self, extra: str) -> Path:
        return self.text("study.yaml", f"name: s\ndata_root: {self.root}\ntrain_set: phantom/train\n"
                                       "val_set: phantom/val\ntest_sets: [phantom/test]\n" + extra)

    def bad_tree(self, bad: Callable[[Path], object]) -> Path:
        """The tiny tree with one bad file made by `bad(path)` in ds/train's malignant folder."""
        root = tiny_tree(self.tmp / "tree")
        bad(published(root, "train", "Am", True, 9))
        return root


@pytest.fixture(scope="module")
def runs(phantom_root, tmp_path_factory) -> tuple[Path, Path]:
    """A finished classifier run and a finished GAN run (tiny, one epoch each)."""
    from dpmammo.gan import GanConfig, train_gan
    from dpmammo.models import CnnSmallConfig
    from dpmammo.train import DataConfig, TrainConfig, TrainSettings, fit

    base = tmp_path_factory.mktemp("runs")
    fit(TrainConfig(data=DataConfig(root=phantom_root, train=["phantom/train"], val="phantom/val"),
                    model=CnnSmallConfig(input_size=32, width=4),
                    train=TrainSettings(epochs=1, batch_size=64, device="cpu")), base / "clf", progress=False)
    gan_cfg = GanConfig.model_validate({"data": {"root": str(phantom_root), "train": ["phantom/train"]},
                                        "model": {"image_size": 16, "g_width": 4, "d_width": 4},
                                        "train": {"epochs": 1, "batch_size": 64, "sample_every": 0, "device": "cpu"}})
    train_gan(gan_cfg, base / "gan", progress=False)
    return base / "clf", base / "gan"


@pytest.fixture
def ctx(phantom_root, runs, tmp_path, monkeypatch) -> Ctx:
    monkeypatch.chdir(tmp_path)  # a command's default output (runs/...) lands here, not in the repository
    return Ctx(phantom_root, runs[0], runs[1], tmp_path)


def wrong_shape_weights(c: Ctx) -> Path:
    from dpmammo.models import create_model, save_weights

    path = c.tmp / "w8.safetensors"
    save_weights(create_model("cnn-small", input_size=32, width=8), path)
    return path


def non_empty_folder(c: Ctx) -> Path:
    (c.tmp / "full").mkdir()
    (c.tmp / "full" / "keep.txt").write_text("mine")
    return c.tmp / "full"


def one_class_folder(c: Ctx) -> Path:
    for i in range(3):
        write_png(c.tmp / "syn" / "only" / f"{i}_malignant.png")
    return c.tmp / "syn" / "only"


def bad_images(c: Ctx, n: int) -> Path:
    root = tiny_tree(c.tmp / "tree")
    for i in range(n):
        published(root, "train", "Am", True, 10 + i).write_bytes(b"")
    return root


# (id, CLI arguments built from the context, a fragment of the message, finished results that must not change)
CASES: list[tuple[str, Callable[[Ctx], list], str, tuple[str, ...]]] = [
    # -- config files
    ("config-not-found", lambda c: ["train", c.tmp / "nope.yaml"], "config file not found", ()),
    ("config-is-a-folder", lambda c: ["train", c.tmp], "config file not found", ()),
    ("invalid-yaml", lambda c: ["train", c.text("c.yaml", "data: [unclosed\n")], "not valid YAML", ()),
    ("yaml-tab-indent", lambda c: ["train", c.text("c.yaml", "train:\n\tepochs: 3\n")], "not valid YAML", ()),
    ("empty-yaml", lambda c: ["train", c.text("c.yaml", "")], "is empty", ()),
    ("comments-only-yaml", lambda c: ["train", c.text("c.yaml", "# train:\n#   epochs: 3\n")], "is empty", ()),
    ("yaml-list-at-top", lambda c: ["train", c.text("c.yaml", "- train\n- epochs\n")],
     "the top level must be a mapping of keys to values, not a list", ()),
    ("yaml-not-utf8", lambda c: ["train", c.text("c.yaml", "train: {epochs: 3}\n# caf\xe9\n".encode("latin-1"))],
     "not UTF-8 text", ()),
    ("unknown-key", lambda c: ["train", c.train_yaml("optim: {lr: 0.01, momentun: 0.9}\n")],
     "optim.momentun: unknown key", ()),
    ("negative-epochs", lambda c: ["train", c.train_yaml(), "--set", "train.epochs=-1"],
     "train.epochs: Input should be greater than or equal to 1 (got -1)", ()),
    ("epochs-not-a-number", lambda c: ["train", c.train_yaml(), "--set", "train.epochs=many"],
     "train.epochs: Input should be a valid integer", ()),
    ("unknown-model", lambda c: ["train", c.train_yaml(), "--set", "model.name=resnet50"],
     "does not match any of the expected tags: 'cnn-small', 'swin_t'", ()),
    ("unknown-optimizer", lambda c: ["train", c.train_yaml(), "--set", "optim.name=lion"], "optim.name", ()),
    ("set-without-equals", lambda c: ["train", c.train_yaml(), "--set", "train.epochs"], "expected key=value", ()),
    ("set-empty-key-part", lambda c: ["train", c.train_yaml(), "--set", "train..epochs=3"],
     "'train..epochs' is not a key path", ()),
    ("set-into-a-value", lambda c: ["train", c.train_yaml(), "--set", "model.name.size=3"],
     "'name' is not a section", ()),
    # -- privacy
    ("negative-epsilon", lambda c: ["train", c.train_yaml("privacy: {target_epsilon: -1}\n")],
     "privacy.target_epsilon: Input should be greater than 0", ()),
    ("unknown-accountant", lambda c: ["train", c.train_yaml("privacy: {target_epsilon: 3, accountant: gdp}\n")],
     "privacy.accountant", ()),
    ("delta-at-least-1-over-n", lambda c: ["train", c.train_yaml("privacy: {target_epsilon: 3, delta: 0.01}\n"),
                                           "--out", c.tmp / "run"], "must be in (0, 1/N)", ()),
    ("dp-batch-larger-than-n", lambda c: ["train", c.train_yaml("privacy: {target_epsilon: 3}\n"), "--out",
                                          c.tmp / "run", "--set", "train.batch_size=1000"],
     "batch_size=1000 must be between 1 and the 400 units of privacy", ()),
    ("epsilon-inf-with-privacy-block", lambda c: ["train", c.train_yaml("privacy: {target_epsilon: .inf}\n"), "--out",
                                                  c.tmp / "run"], "drop the privacy block for non-private training", ()),
    ("unknown-privacy-unit", lambda c: ["train", c.train_yaml("privacy: {target_epsilon: 3, unit: hospital}\n"),
                                        "--out", c.tmp / "run"], "privacy.unit: Input should be 'patient' or 'patch'", ()),
    # -- data
    ("data-root-missing", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "run",
                                     "--set", f"data.root={c.tmp / 'nowhere'}"],
     "data folder not found", ()),
    ("unknown-split", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "run", "--set", "data.val=phantom/tset"],
     "unknown data set 'phantom/tset'; this data folder has: phantom/test, phantom/train, phantom/val", ()),
    ("public-weights-missing-file", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "run", "--set",
                                               f"model.weights={c.tmp / 'none.safetensors'}"],
     "weight file not found", ()),
    ("folder-without-images", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "run",
                                         "--set", f"data.root={non_empty_folder(c)}"], "no patches found under", ()),
    ("index-missing-folder", lambda c: ["data", "index", c.tmp / "nowhere"], "data folder not found", ()),
    ("index-unknown-layout", lambda c: ["data", "index", c.bad_tree(
        lambda p: write_png(p.parents[1] / "misc" / "scan.png"))], "unknown layout", ()),
    ("index-zero-byte-png", lambda c: ["data", "index", c.bad_tree(lambda p: p.write_bytes(b""))],
     "patientAm_image9_mass9_is_benign_0.png: empty file (0 bytes)", ()),
    ("index-truncated-png", lambda c: ["data", "index", c.bad_tree(truncated_png)],
     "patientAm_image9_mass9_is_benign_0.png: corrupt or truncated", ()),
    ("index-text-named-png", lambda c: ["data", "index", c.bad_tree(lambda p: p.write_text("not an image"))],
     "is_benign_0.png: not an image Pillow can read", ()),
    ("index-decompression-bomb", lambda c: ["data", "index", c.bad_tree(lambda p: png_declaring(p, 20000, 20000))],
     "is_benign_0.png: too large for a patch", ()),
    ("index-16-bit-nearly-black", lambda c: ["data", "index", c.bad_tree(
        lambda p: write_png(p, value=900, dtype=np.uint16))], "16-bit image whose values stay below 4096", ()),
    ("index-counts-bad-images", lambda c: ["data", "index", bad_images(c, 5)],
     "5 of 13 images under", ()),
    ("train-decompression-bomb", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "run", "--set",
                                            f"data.root={c.bad_tree(lambda p: png_declaring(p, 20000, 20000))}",
                                            "--set", "data.train=[ds/train]", "--set", "data.val=ds/val"],
     "patientAm_image9_mass9_is_benign_0.png: too large for a patch", ()),
    # -- runs
    ("out-is-a-file", lambda c: ["train", c.train_yaml(), "--out", c.text("taken", "x")], "is a file", ()),
    ("train-into-finished-run", lambda c: ["train", c.train_yaml(), "--out", c.clf],
     "already holds a finished run", ("clf",)),
    ("init-from-unfinished", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "run", "--set", f"init_from={non_empty_folder(c)}"],
     "is not a finished run", ()),
    ("evaluate-not-a-run", lambda c: ["evaluate", c.tmp], "is not a finished run", ()),
    ("evaluate-unknown-test-set", lambda c: ["evaluate", c.clf, "--on", "phantom/test", "--on", "phantom/tets"],
     "unknown data set 'phantom/tets'", ("clf",)),
    ("evaluate-a-gan-run", lambda c: ["evaluate", c.gan, "--on", "phantom/test"], "is not a classifier run (its config.yaml is a generator config)",
     ("gan",)),
    # -- weights
    ("weights-missing", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "run", "--set",
                                   f"model.weights={c.tmp / 'none.safetensors'}"], "weight file not found", ()),
    ("weights-wrong-shape", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "run", "--set",
                                       f"model.weights={wrong_shape_weights(c)}"],
     "do not fit the model: ", ()),
    ("weights-corrupt", lambda c: ["train", c.train_yaml(), "--out", c.tmp / "run", "--set",
                                   f"model.weights={c.text('bad.safetensors', os.urandom(64))}"],
     "cannot read weight file", ()),
    # -- GAN
    ("gan-config-with-classifier-keys", lambda c: ["gan", "train", c.gan_yaml("optim: {lr: 0.001}\n")],
     "optim.lr: unknown key", ()),
    ("gan-sample-classifier-run", lambda c: ["gan", "sample", c.clf, "--out", c.tmp / "s"],
     "is not a generator run (its config.yaml is a classifier config)", ("clf",)),
    ("gan-sample-not-a-run", lambda c: ["gan", "sample", non_empty_folder(c), "--out", c.tmp / "s"], "is not a finished generator run", ()),
    ("gan-sample-n-0", lambda c: ["gan", "sample", c.gan, "--out", c.tmp / "s", "--n", "0"],
     "--n 0: need at least 2 patches", ("gan",)),
    ("gan-sample-balance-out-of-range", lambda c: ["gan", "sample", c.gan, "--out", c.tmp / "s", "--balance", "1.5"],
     "balance=1.5 must be in [0, 1]", ("gan",)),
    ("gan-sample-into-non-empty-folder", lambda c: ["gan", "sample", c.gan, "--out", non_empty_folder(c), "--n", "4"],
     "is not empty; choose another folder or pass --force", ("gan",)),
    ("gan-score-missing-folder", lambda c: ["gan", "score", c.tmp / "nowhere", "--data-root", c.root, "--ref",
                                            "phantom/train", "--classifier-out", c.tmp / "clf"],
     "synthetic folder not found", ()),
    ("gan-score-one-class", lambda c: ["gan", "score", one_class_folder(c), "--data-root", c.root, "--ref",
                                       "phantom/train", "--classifier-out", c.tmp / "clf"],
     "empty class: synthetic/only has no benign patches", ()),
    # -- studies
    ("unknown-preset", lambda c: ["study", "--preset", "papr"], "unknown preset 'papr'; presets: quick, quick-audit, quick-e2e, utility, paper", ()),
    ("study-file-and-preset", lambda c: ["study", c.study_yaml(""), "--preset", "quick"], "(exactly one)", ()),
    ("study-duplicate-epsilon", lambda c: ["study", c.study_yaml("conditions: [real]\nepsilons: [1, 6, 1.0]\n")],
     "epsilons lists a value twice", ()),
    ("study-unknown-condition", lambda c: ["study", c.study_yaml("conditions: [real, magic]\nepsilons: [1]\n")],
     "conditions.1", ()),
    ("study-epsilon-zero", lambda c: ["study", "--preset", "quick", "--set", "epsilons=[0, 6]"],
     "ε must be > 0", ()),
    ("study-target-epsilon-in-privacy", lambda c: ["study", c.study_yaml(
        "conditions: [real]\nepsilons: [1]\nprivacy: {target_epsilon: 3}\n")], "set the budgets in `epsilons`", ()),
    ("study-unknown-executor", lambda c: ["study", c.study_yaml("conditions: [real]\nepsilons: [1]\n"),
                                          "--out", c.tmp / "st", "--executor", "slurm"],
     "unknown executor 'slurm'", ()),
]


@pytest.mark.parametrize("make_args,fragment,protected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(ctx, make_args, fragment, protected):
    args = make_args(ctx)
    before = {name: digest(getattr(ctx, name)) for name in protected}
    out = invoke(*args)
    assert_one_line_error(out.code, out.stderr, fragment)
    for name in protected:
        assert digest(getattr(ctx, name)) == before[name], f"the finished {name} run changed"


def test_the_corpus_is_large_and_ids_are_unique():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def test_refused_sample_leaves_the_folder_as_it_was(ctx):
    folder = non_empty_folder(ctx)
    assert_one_line_error(*_code_err(invoke("gan", "sample", ctx.gan, "--out", folder, "--n", "4")), "is not empty")
    assert digest(folder) == {"keep.txt": hashlib.sha256(b"mine").hexdigest()}
    assert_one_line_error(*_code_err(invoke("gan", "sample", ctx.gan, "--out", ctx.tmp / "new", "--n", "0")),
                          "need at least 2")
    assert not (ctx.tmp / "new").exists()


def _code_err(out: Outcome) -> tuple[int, str]:
    return out.code, out.stderr


# ---------------------------------------------------------------- the real command (subprocesses)

def test_decompression_bomb_in_train_is_one_line_from_the_real_command(ctx):
    """The 60-line DecompressionBombError traceback of `train`, now one line naming the file."""
    root = ctx.bad_tree(lambda p: png_declaring(p, 20000, 20000))
    r = run_cli("train", ctx.train_yaml(), "--out", ctx.tmp / "run", "--set", f"data.root={root}",
                "--set", "data.train=[ds/train]", "--set", "data.val=ds/val")
    assert_one_line_error(r.returncode, r.stderr, f"cannot read image {published(root, 'train', 'Am', True, 9)}: "
                                                  "too large for a patch")


def test_paper_preset_offline_fails_fast_in_one_line(tmp_path):
    """No network, empty Hugging Face cache: one line saying how to provide the weights, no retries
    (before: ~50 s and 24 lines of retry warnings here, minutes elsewhere). The endpoint is a
    closed local port, so the one download attempt fails at once whatever the machine's network."""
    t0 = time.perf_counter()
    r = run_cli("study", "--preset", "paper", "--out", tmp_path / "paper",
                env={"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"})
    elapsed = time.perf_counter() - t0
    assert_one_line_error(r.returncode, r.stderr, "ImageNet weights for swin_tiny_patch4_window7_224 are not in the "
                                                  "Hugging Face cache")
    assert "model.backbone_weights" in r.stderr
    assert not (tmp_path / "paper").exists()  # refused before the study directory is written
    assert elapsed < 60, elapsed  # imports included; the refusal itself is well under a second


def test_pretrained_swin_with_hf_offline_and_empty_cache_raises_at_once(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from dpmammo.models import create_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    t0 = time.perf_counter()
    with pytest.raises(DpMammoError) as e:
        create_model("swin_t", pretrained=True)
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE is set" in msg and "model.backbone_weights" in msg


# ---------------------------------------------------------------- what used to be silent or raw

def test_sixteen_bit_png_is_scaled_by_its_depth_not_clipped(tmp_path):
    from dpmammo.data.pixels import read_patch

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = write_png(tmp_path / "ramp16.png", dtype=np.uint16)
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    pixels = read_patch(str(path), 64)
    assert (pixels == 255).mean() < 0.01  # Pillow's convert("L") made 99.6% of them 255
    assert np.abs(pixels.astype(int) - np.round(ramp / 257)).max() <= 1
    eight = write_png(tmp_path / "ramp8.png")
    Image.fromarray((ramp // 257).astype(np.uint8)).save(eight)
    assert np.abs(read_patch(str(eight), 64).astype(int) - pixels).max() <= 1  # same picture, same pixels


def test_index_names_skipped_files_and_decodes_every_image(tmp_path):
    root = tiny_tree(tmp_path / "tree")
    (root / "ds" / "train" / "is_benign_true" / "scan.jpg").write_bytes(b"\xff\xd8")
    (root / "notes.txt").write_text("where these came from")
    out = invoke("data", "index", root)
    assert out.code == 0, out.stderr
    assert "skipped 2 file(s) that are not .png patches: ds/train/is_benign_true/scan.jpg, notes.txt" in out.stdout
    assert "decoding every image [8/8 images" in out.stdout  # the plain progress line (no terminal here)


def test_index_of_the_real_data_set_stays_fast(real_root):
    t0 = time.perf_counter()
    out = invoke("data", "index", real_root)
    elapsed = time.perf_counter() - t0
    assert out.code == 0, out.stderr
    assert "decoding every image [5804/5804 images" in out.stdout and "skipped 1 file(s)" in out.stdout  # SOURCE.md
    assert elapsed < 30, elapsed  # measured 1.6 s on an idle 2-core machine


def test_frechet_distance_of_singular_covariances_is_exact_and_silent():
    import warnings

    from dpmammo.gan.score import fd_conditioning_note, frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 8)), rng.normal(size=(500, 8)) + 1.0
    a[:, :3] = 0  # three features that never fire: Σa is singular (SciPy's sqrtm warned here)
    b[:, :3] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fd = frechet_distance(a, b)
    # dead features add nothing: the distance is that of the five live ones, where SciPy's sqrtm is fine
    from scipy import linalg

    live_a, live_b = a[:, 3:], b[:, 3:]
    cov_a, cov_b = np.cov(live_a, rowvar=False), np.cov(live_b, rowvar=False)
    reference = (((live_a.mean(0) - live_b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b).real))
    assert fd == pytest.approx(reference, rel=1e-9)
    assert fd_conditioning_note(500, 500, 8) is None
    assert "only 40 patches for 64 features" in fd_conditioning_note(40, 100, 64)


def test_gan_score_says_it_trains_a_classifier_and_keeps_the_frd_hint(ctx):
    """The quick classifier is announced before it trains; `[frd]` survives rich markup."""
    folder = ctx.tmp / "samples"
    out = invoke("gan", "sample", ctx.gan, "--out", folder, "--n", "40")
    assert out.code == 0, out.stderr
    result = CliRunner().invoke(app, ["gan", "score", str(folder), "--data-root", str(ctx.root), "--ref",
                                      "phantom/val", "--val", "phantom/test", "--classifier-out",
                                      str(ctx.tmp / "clf"), "--max-images", "40"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("no --classifier given: training a non-private cnn-small on phantom/val")
    assert "pip install 'dpmammo[frd]'" in result.stdout
    assert "only 40 patches for 64 features" in result.stdout
    assert result.stderr == ""  # no raw warnings


def test_a_refused_start_leaves_no_run_directory(ctx):
    """Refused after the config was read (unknown split, missing weights): nothing is left behind, so
    the corrected command is not refused as "an unfinished run with another config"."""
    for over in ("data.val=phantom/tset", f"model.weights={ctx.tmp / 'none.safetensors'}"):
        out = ctx.tmp / "refused"
        assert invoke("train", ctx.train_yaml(), "--out", out, "--set", over).code == 2
        assert not out.exists()
