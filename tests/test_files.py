"""Users' files are sacred: a command replaces only what it wrote (a dpmammo output it recognises
by its marker, and only with --force); an --out that is, holds or lies inside an input, or that
cannot be a folder of ours, is refused in one line before anything is touched; a refused start
leaves the folder exactly as it was; one process at a time writes an output.

Every case hashes the whole scratch folder (data, runs, the user's own files) before and after.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dpmammo.errors import DpMammoError
from tests.conftest import stopped_after_first_checkpoint
from tests.test_bad_inputs import Ctx, assert_one_line_error, ctx, digest, invoke, runs, tiny_tree  # noqa: F401

MINE = "my own notes\n"


def tree_digest(*folders: Path) -> dict[str, dict[str, str]]:
    return {str(f): digest(f) for f in folders}


def refused(c: Ctx, args: list, fragment: str, *watched: Path) -> None:
    """`args` exits 2 with one line holding `fragment`, and no file under the scratch folder, the
    data or the finished runs changed, appeared or vanished."""
    folders = (c.tmp, c.root, c.clf.parent, *watched)
    before = tree_digest(*folders)
    out = invoke(*args)
    assert_one_line_error(out.code, out.stderr, fragment)
    assert tree_digest(*folders) == before


def user_folder(c: Ctx, name: str = "mine", **files: str) -> Path:
    folder = c.tmp / name
    folder.mkdir()
    for fname, text in (files or {"notes.txt": MINE}).items():
        (folder / fname.replace("__", "/")).parent.mkdir(parents=True, exist_ok=True)
        (folder / fname.replace("__", "/")).write_text(text)
    return folder


# ---------------------------------------------------------------- a refused start changes nothing

def test_train_into_the_folder_of_its_own_config_keeps_the_config(ctx):
    """`dpmammo train config.yaml --out .` where config.yaml is the user's: it was deleted."""
    cfg = ctx.train_yaml(name="config.yaml")
    refused(ctx, ["train", cfg, "--out", ctx.tmp], "holds the config file")
    assert cfg.is_file()


def test_force_never_replaces_run_file_names_that_dpmammo_did_not_write(ctx):
    """A folder with the user's own config.yaml, log.txt and eval/ (no run marker): --force wiped them."""
    folder = user_folder(ctx, **{"config.yaml": "my: config\n", "log.txt": MINE, "eval__table.csv": "a,b\n"})
    refused(ctx, ["train", ctx.train_yaml(), "--out", folder, "--force"], "that dpmammo did not write there")
    refused(ctx, ["gan", "train", ctx.gan_yaml(), "--out", folder, "--force"], "that dpmammo did not write there")


def test_force_start_that_is_refused_keeps_the_finished_run(ctx):
    """--force on a finished run, then a refusal (unknown validation set): the run was emptied first."""
    import shutil

    run = ctx.tmp / "finished"
    shutil.copytree(ctx.clf, run)
    (run / "eval").mkdir()
    (run / "eval" / "x.json").write_text("{}")
    refused(ctx, ["train", ctx.train_yaml(), "--out", run, "--force", "--set", "data.val=phantom/tset"],
            "unknown data set 'phantom/tset'")
    assert not (run / ".dpmammo-replaced").exists()


def test_force_replaces_a_finished_run_but_not_the_users_files_in_it(ctx):
    import shutil

    run = ctx.tmp / "finished"
    shutil.copytree(ctx.clf, run)
    (run / "README.txt").write_text(MINE)
    out = invoke("train", ctx.train_yaml(), "--out", run, "--force", "--set", "train.seed=1")
    assert out.code == 0, out.stderr
    assert (run / "README.txt").read_text() == MINE and (run / "metrics.json").is_file()
    assert "seed: 1" in (run / "config.yaml").read_text() and not (run / ".dpmammo-replaced").exists()


def test_a_run_resumes_from_its_own_config_file(ctx, monkeypatch):
    """The run's own config.yaml given back (`train RUN/config.yaml --out RUN`) is not an overlap."""
    from dpmammo.config import load_config
    from dpmammo.train import TrainConfig, fit

    run = ctx.tmp / "r"
    cfg = load_config(TrainConfig, ctx.train_yaml(), ["train.epochs=2", "train.checkpoint_every_s=0"])
    with stopped_after_first_checkpoint(monkeypatch):
        fit(cfg, run, progress=False)
    assert (run / "checkpoint.pt").is_file()
    out = invoke("train", run / "config.yaml", "--out", run)
    assert out.code == 0, out.stderr
    assert "resumed after epoch 1" in (run / "log.txt").read_text()


# ---------------------------------------------------------------- --out overlapping an input

def extract_table(c: Ctx) -> Path:
    """A folder holding a 12-lesion annotation table (one patient each) and its PNG images."""
    import numpy as np
    from PIL import Image

    folder = c.tmp / "hospital"
    folder.mkdir()
    rows = ["image,patient,label,x,y,width,height"]
    for i in range(12):
        img = np.full((200, 200), 40, dtype=np.uint8)
        img[80:120, 80:120] = 220
        Image.fromarray(img).save(folder / f"i{i}.png")
        rows.append(f"i{i}.png,p{i},{i % 2},80,80,40,40")
    (folder / "t.csv").write_text("\n".join(rows) + "\n")
    return folder


def sampled(c: Ctx) -> Path:
    from dpmammo.gan import sample

    if not (c.tmp / "syn").exists():
        sample(c.gan, 8, c.tmp / "syn")
    return c.tmp / "syn"


def study_yaml(c: Ctx, name: str = "s") -> Path:
    return c.text("study.yaml", f"name: {name}\ndata_root: {c.root}\ntrain_set: phantom/train\nval_set: phantom/val\n"
                                "test_sets: [phantom/test]\nconditions: [real]\nepsilons: [inf]\n"
                                "model: {name: cnn-small, input_size: 32, width: 4}\n"
                                "train: {epochs: 1, batch_size: 32, device: cpu}\n")


OVERLAPS = [
    # the generator run itself, and the folder holding it (and sibling runs)
    ("gan-sample-into-its-run", lambda c: ["gan", "sample", c.gan, "--out", c.gan, "--force", "--n", "4"],
     "is the generator run"),
    ("gan-sample-into-the-runs-parent", lambda c: ["gan", "sample", c.gan, "--out", c.gan.parent, "--force", "--n", "4"],
     "holds the generator run"),
    ("gan-sample-into-its-run-via-dotdot", lambda c: ["gan", "sample", c.gan, "--out", c.gan / "samples" / "..",
                                                      "--force", "--n", "4"], "is the generator run"),
    ("extract-into-the-tables-folder", lambda c: ["data", "extract", "csv", "--table", extract_table(c) / "t.csv",
                                                  "--dataset", "h", "--out", c.tmp / "hospital", "--force",
                                                  "--workers", "1"], "holds the --table"),
    ("train-init-from-itself", lambda c: ["train", c.train_yaml(), "--out", c.clf, "--force",
                                          "--set", f"init_from={c.clf}"], "is init_from"),
    ("train-into-the-data", lambda c: ["train", c.train_yaml(), "--out", c.root / "runs" / "x"],
     "lies inside the data folder"),
    ("train-over-its-weights", lambda c: ["train", c.train_yaml(), "--out", c.clf, "--force",
                                          "--set", f"model.weights={c.clf / 'model.safetensors'}"], "holds model.weights"),
    ("gan-train-into-the-data", lambda c: ["gan", "train", c.gan_yaml(), "--out", c.root / "phantom"],
     "lies inside the data folder"),
    ("index-manifest-inside-the-data", lambda c: ["data", "index", c.root, "-o", c.root / "manifest.csv"],
     "-o " + "{root}/manifest.csv lies inside the data folder"),
    ("evaluate-data-root-holding-the-run", lambda c: ["evaluate", c.clf, "--on", "phantom/test",
                                                      "--data-root", c.clf.parent], "lies inside the data folder"),
    ("study-into-the-data", lambda c: ["study", study_yaml(c), "--out", c.root], "is the data folder"),
    ("study-holding-its-config", lambda c: ["study", study_yaml(c), "--out", c.tmp], "holds the study config"),
    ("study-into-a-users-folder", lambda c: ["study", study_yaml(c), "--out",
                                             user_folder(c, "results", **{"results.md": MINE, "report.html": MINE})],
     "is not empty and holds no study.yaml"),
    ("study-named-dotdot", lambda c: ["study", study_yaml(c, "'..'")], "name: String should match pattern"),
    ("audit-into-the-data", lambda c: ["audit", c.train_yaml(), "--out", c.root / "audit"],
     "lies inside the data folder"),
    ("score-json-into-the-synthetic-folder", lambda c: ["gan", "score", sampled(c), "--data-root", c.root, "--ref",
                                                        "phantom/train", "--classifier", c.clf,
                                                        "--json", sampled(c) / "scores.json"],
     "lies inside the synthetic folder"),
]


@pytest.mark.parametrize("make_args,fragment", [c[1:] for c in OVERLAPS], ids=[c[0] for c in OVERLAPS])
def test_out_overlapping_an_input_is_refused_before_anything_is_touched(ctx, make_args, fragment):
    refused(ctx, make_args(ctx), fragment.replace("{root}", str(ctx.root)))


# ---------------------------------------------------------------- --out that cannot be ours

def _dangling(c: Ctx) -> Path:
    (c.tmp / "link").symlink_to(c.tmp / "gone" / "deeper")
    return c.tmp / "link"


BAD_OUTS = [
    ("a-file", lambda c: c.text("taken", "x"), "is a file, not a folder"),
    ("under-a-file", lambda c: c.text("taken", "x") / "sub", "which is a file, not a folder"),
    ("dangling-symlink", _dangling, "is a symbolic link to"),
    ("under-proc", lambda c: Path("/proc/dpmammo-out"), "lies in /proc, a system folder"),
    ("dev-null-x", lambda c: Path("/dev/null/x"), "a system folder"),
    ("name-300-chars", lambda c: c.tmp / ("n" * 300), "300 bytes long"),
]
WRITERS = [
    ("train", lambda c, out: ["train", c.train_yaml(), "--out", out]),
    ("gan-sample", lambda c, out: ["gan", "sample", c.gan, "--out", out, "--n", "4"]),
    ("phantoms", lambda c, out: ["data", "phantoms", out, "--n", "4", "--size", "32"]),
    ("audit", lambda c, out: ["audit", c.train_yaml(), "--out", out]),
]


@pytest.mark.parametrize("make_out,fragment", [b[1:] for b in BAD_OUTS], ids=[b[0] for b in BAD_OUTS])
@pytest.mark.parametrize("command", [w[1] for w in WRITERS], ids=[w[0] for w in WRITERS])
def test_an_out_that_cannot_be_a_folder_is_one_line(ctx, command, make_out, fragment):
    refused(ctx, command(ctx, make_out(ctx)), fragment)


def test_index_manifest_path_that_cannot_be_a_file_is_one_line(ctx):
    refused(ctx, ["data", "index", ctx.root, "-o", ctx.tmp], "is a folder, not a file")
    refused(ctx, ["data", "index", ctx.root, "-o", ctx.text("f", "x") / "m.csv"], "which is a file")


def test_no_permission_is_one_line(ctx, monkeypatch):
    """Refused before anything is written (checked here by pretending the folder is read-only:
    the tests may run as root, for whom every folder is writable)."""
    import dpmammo.files

    parent = user_folder(ctx, "readonly")
    real_access = dpmammo.files.os.access
    monkeypatch.setattr(dpmammo.files.os, "access", lambda p, mode: Path(p) != parent and real_access(p, mode))
    refused(ctx, ["train", ctx.train_yaml(), "--out", parent / "run"], "no permission to write in")
    refused(ctx, ["gan", "sample", ctx.gan, "--out", parent / "s", "--n", "4"], "no permission to write in")


# ---------------------------------------------------------------- one writer at a time

def test_a_second_sampler_into_the_same_folder_is_refused(ctx):
    """While one `gan sample` holds --out, another is refused at once and writes nothing (both
    exited 0 before: one manifest lost, stray PNGs left)."""
    from dpmammo.files import exclusive

    out = ctx.tmp / "s"
    with exclusive(out.resolve(), "sampling into"):
        refused(ctx, ["gan", "sample", ctx.gan, "--out", out, "--n", "4"], "another dpmammo process is sampling into")
    assert not out.exists()
    assert invoke("gan", "sample", ctx.gan, "--out", out, "--n", "4").code == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000_malignant.png", "00001_malignant.png",
                                                     "00002_benign.png", "00003_benign.png",
                                                     "manifest.csv", "provenance.json"]
    assert sorted(p.name for p in ctx.tmp.iterdir() if p.name.startswith(".s")) == []  # no lock, no temporary


def test_sample_force_replaces_only_its_own_folder(ctx):
    out = ctx.tmp / "s"
    assert invoke("gan", "sample", ctx.gan, "--out", out, "--n", "4").code == 0
    assert invoke("gan", "sample", ctx.gan, "--out", out, "--n", "6", "--force").code == 0
    assert len(list(out.glob("*.png"))) == 6
    mine = user_folder(ctx)
    refused(ctx, ["gan", "sample", ctx.gan, "--out", mine, "--n", "4", "--force"],
            "is not a folder written by `dpmammo gan sample`")


def test_extract_force_replaces_only_its_own_folder(ctx):
    table = extract_table(ctx) / "t.csv"
    args = ["data", "extract", "csv", "--table", table, "--dataset", "h", "--split", "0.5,0.25,0.25", "--workers", "1"]
    mine = user_folder(ctx)
    refused(ctx, [*args, "--out", mine, "--force"], "is not a folder written by `dpmammo data extract`")
    out = ctx.tmp / "ext"
    assert invoke(*args, "--out", out).code == 0
    assert invoke(*args, "--out", out, "--force").code == 0 and (out / "extract.json").is_file()


# ---------------------------------------------------------------- the test data is found as the package finds it

def test_real_data_is_found_as_the_package_finds_it(tmp_path, monkeypatch):
    import tests.conftest as conftest

    monkeypatch.setattr(conftest, "REPO", tmp_path / "clone" / "dpmammo")  # nothing beside this clone
    data = tmp_path / "mammo_dp"
    data.mkdir()
    monkeypatch.setattr(conftest, "_USER_ENV", {"DPMAMMO_DATA": str(data)})
    assert conftest.real_data_root() == data
    monkeypatch.setattr(conftest, "_USER_ENV", {"DPMAMMO_CACHE": str(tmp_path)})
    assert conftest.real_data_root() == data  # the fetch cache: $DPMAMMO_CACHE/mammo_dp
    monkeypatch.setattr(conftest, "_USER_ENV", {"DPMAMMO_CACHE": str(tmp_path / "empty")})
    monkeypatch.delenv(conftest.REQUIRE_DATA, raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:  # absent: skipped, saying what to do
        conftest.real_data_root()
    monkeypatch.setenv(conftest.REQUIRE_DATA, "1")
    with pytest.raises(pytest.fail.Exception) as failed:  # as scripts/test.sh (CI) runs: a failure, never a skip
        conftest.real_data_root()
    for e in (skipped, failed):
        assert "`dpmammo data fetch`" in str(e.value) and "DPMAMMO_TEST_DATA" in str(e.value)


def test_overlap_check_resolves_symlinks_and_dots(tmp_path):
    from dpmammo.files import check_out

    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    for out in (tmp_path / "alias" / "a" / "out", tmp_path / "data" / "b" / ".." / "a", tmp_path / "alias" / ".."):
        with pytest.raises(DpMammoError, match="an output must not overlap an input"):
            check_out(out, [("the data folder", tmp_path / "data" / "a")])
    assert check_out(tmp_path / "elsewhere", [("the data folder", tmp_path / "alias")]) == tmp_path / "elsewhere"
