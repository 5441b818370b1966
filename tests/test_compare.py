"""`dpmammo compare`: finished studies side by side at equal ε, per shared test set.

The table logic is checked on rows made here (which cell is best with a guarantee at each ε:
chosen on validation, not on test; that a cell without a guarantee or over its ε never wins,
mean ± std, ε of another unit in its own column); then two tiny phantom studies (a fixed synthetic folder without provenance, and real
patches under DP with secret noise) are run once and compared end to end, with the refusals.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpmammo.errors import DpMammoError
from dpmammo.report.compare import (Column, StudyResults, all_columns, best_guaranteed, compare_studies,
                                    comparison_grid, is_guaranteed, cells)
from tests.conftest import read_csv, study_config, tiny_study_block


def row(cond, eps, seed, auroc, guarantee="dp", total=None, unit="patient", test_set="phantom/test", val=0.5):
    """One results.csv row as read_results gives it back (`val`: the run's validation AUROC)."""
    return {"condition": cond, "run_id": f"{cond}/{eps}/seed{seed}", "stage": "x", "test_set": test_set,
            "status": "ok", "epsilon_target": float(eps), "guarantee_total": guarantee,
            "epsilon_total": (total if total is not None else float(eps)) if guarantee == "dp" else None,
            "unit": unit if guarantee == "dp" else None, "seed": seed, "val_auroc": val, "auroc": auroc}


def made_studies(tmp_path: Path) -> list[StudyResults]:
    """Three studies of rows made here: the shipped-set kind (no guarantee), a DP generator and a
    procedural prior at ε per patch."""
    base = tiny_study_block(tmp_path / "data", seeds=[0, 1])
    gan = study_config({**base, "name": "gan-set", "synthetic": str(tmp_path / "no-such-folder"),
                        "conditions": ["real", "synthetic->real"], "epsilons": [1, 6, "inf"]})
    # At ε = 1 per patient, gan-set's real is lower on test (0.56) than dp-generator's 0.59 but
    # higher on validation (0.70 against 0.61): it is the one chosen.
    gan_rows = [row("real", 1, s, a, total=0.99, val=v) for s, a, v in ((0, 0.55, 0.68), (1, 0.57, 0.72))]
    gan_rows += [row("synthetic→real", 1, s, a, guarantee="none", val=0.9) for s, a in ((0, 0.70), (1, 0.72))]
    gan_rows += [row("real", 6, s, a, total=5.9) for s, a in ((0, 0.60), (1, 0.62))]
    gan_rows += [row("synthetic→real", 6, s, 0.71, guarantee="none") for s in (0, 1)]
    gan_rows += [row(c, "inf", s, 0.73, guarantee="none") for c in ("real", "synthetic→real") for s in (0, 1)]
    dp_gen = study_config({**base, "name": "dp-generator", "conditions": ["synthetic->real"], "epsilons": [1, 6],
                           "synthetic": {"generator": {"generator": "dp-merf", "privacy": {"target_epsilon": 1}},
                                         "generator_share": 0.5}})
    dp_rows = [row("synthetic→real", 1, s, a, total=1.0, val=v) for s, a, v in ((0, 0.58, 0.60), (1, 0.60, 0.62))]
    dp_rows += [row("synthetic→real", 6, s, 0.66, total=6.4, val=0.9) for s in (0, 1)]  # over its ε: never counts
    prior = study_config({**base, "name": "prior", "conditions": ["prior->real"], "epsilons": [1], "seeds": [0],
                          "privacy": {"unit": "patch"},
                          "prior": {"pretrain": {"data": {"kinds": ["dead-leaves", "spectral"]},
                                                 "model": dict(base["model"])}}})
    prior_rows = [row("prior→real", 1, 0, 0.90, total=1.0, unit="patch")]
    return [StudyResults("gan-set", tmp_path / "a", gan, gan_rows),
            StudyResults("dp-generator", tmp_path / "b", dp_gen, dp_rows),
            StudyResults("prior", tmp_path / "c", prior, prior_rows)]


def test_table_cells_sources_and_the_best_guaranteed_cell(tmp_path):
    studies = made_studies(tmp_path)
    columns = all_columns(studies)
    # Another unit, another column: ε per patch never shares one with ε per patient.
    assert [c.header for c in columns] == ["ε=1 per patch", "ε=1 per patient", "ε=6 per patient", "non-private"]
    grid = comparison_grid(studies, "phantom/test", columns)
    assert grid[0][:2] == ["gan-set", "real"] and grid[0][2] == "none (the private set only)"
    assert grid[0][3:] == ["", "0.560 ± 0.010 (ε≤0.99/patient)", "0.610 ± 0.010 (ε≤5.90/patient)",
                           "0.730 ± 0.000 (no guarantee)"]
    assert grid[1][3:] == ["", "0.710 ± 0.010 (no guarantee)", "0.710 ± 0.000 (no guarantee)",
                           "0.730 ± 0.000 (no guarantee)"]
    assert grid[1][2].startswith("fixed set ") and "no-such-folder" in grid[1][2]
    assert grid[2][2] == "DP generator dp-merf trained by the study at 0.5·ε (non-private at ε = ∞)"
    assert grid[2][3:] == ["", "0.590 ± 0.010 (ε≤1.00/patient)", "0.660 ± 0.000 (ε≤6.40/patient)", ""]
    assert grid[3][2] == "procedural prior (dead-leaves, spectral; public, no ε)"
    assert grid[3][3:] == ["0.900 (ε≤1.00/patch)", "", "", ""]  # one seed: its value only
    # Best with a full guarantee, chosen on validation: at ε = 1 per patient gan-set's real
    # (validation 0.700, test 0.560), not the DP generator's higher test 0.590 (validation 0.610).
    # The no-guarantee rows (validation 0.9) never win, nor the DP generator's cell at ε = 6 (its
    # total 6.4 is over 6); the per-patch prior only in its column.
    assert best_guaranteed(studies, "phantom/test", columns) == [
        "ε=1 per patch: prior / prior→real (validation AUROC 0.500), test 0.900 (ε≤1.00/patch)",
        "ε=1 per patient: gan-set / real (validation AUROC 0.700), test 0.560 ± 0.010 (ε≤0.99/patient)",
        "ε=6 per patient: gan-set / real (validation AUROC 0.500), test 0.610 ± 0.010 (ε≤5.90/patient)",
        "non-private: no cell has a DP chain total"]
    # Equal validation AUROCs: the first study given wins, whatever the test AUROCs.
    tied = [StudyResults(s.label, s.path, s.cfg, [r | {"val_auroc": 0.5} for r in s.rows]) for s in studies[:2]]
    assert best_guaranteed(tied, "phantom/test", [Column(1.0, "patient")]) == [
        "ε=1 per patient: gan-set / real (validation AUROC 0.500), test 0.560 ± 0.010 (ε≤0.99/patient)"]
    assert best_guaranteed(tied[::-1], "phantom/test", [Column(1.0, "patient")]) == [
        "ε=1 per patient: dp-generator / synthetic→real (validation AUROC 0.500), test 0.590 ± 0.010 "
        "(ε≤1.00/patient)"]
    # A per-patch total does not hold per patient; a per-patient one holds per patch.
    prior_cell = cells(studies[2], "phantom/test")[("prior→real", Column(1.0, "patch"))]
    assert not is_guaranteed(prior_cell, Column(1.0, "patient")) and is_guaranteed(prior_cell, Column(1.0, "patch"))
    patient_cell = cells(studies[1], "phantom/test")[("synthetic→real", Column(1.0, "patient"))]
    assert is_guaranteed(patient_cell, Column(1.0, "patch")) and not is_guaranteed(patient_cell, Column(0.5, "patient"))


def test_the_intro_names_the_validation_sets(tmp_path):
    from dpmammo.report.compare import markdown

    gan, dp_gen, _ = made_studies(tmp_path)
    assert "the one with the highest mean validation AUROC (validation set phantom/val), never chosen" in markdown(
        [gan, dp_gen])
    other = StudyResults(dp_gen.label, dp_gen.path, dp_gen.cfg.model_copy(update={"val_set": "other/val"}), dp_gen.rows)
    assert ("(each study's own validation set, so each study's choice is given: gan-set: phantom/val; "
            "dp-generator: other/val)") in markdown([gan, other])


def test_validation_aurocs_of_different_sets_are_not_compared(tmp_path):
    """On one validation set the higher one is chosen (gan-set's real, 0.70 against 0.61); with
    two sets, each study's own choice is given."""
    from dpmammo.report.compare import all_columns, best_guaranteed

    gan, dp_gen, _ = made_studies(tmp_path)
    one = [line for line in best_guaranteed([gan, dp_gen], "phantom/test", all_columns([gan, dp_gen]))
           if line.startswith("ε=1 per patient")]
    assert len(one) == 1 and "gan-set / real (validation AUROC 0.700)" in one[0] and "dp-generator" not in one[0]
    other = StudyResults(dp_gen.label, dp_gen.path, dp_gen.cfg.model_copy(update={"val_set": "other/val"}), dp_gen.rows)
    two = [line for line in best_guaranteed([gan, other], "phantom/test", all_columns([gan, other]))
           if line.startswith("ε=1 per patient")]
    assert len(two) == 1 and "gan-set / real (validation AUROC 0.700)" in two[0]
    assert "dp-generator / synthetic→real (validation AUROC 0.610)" in two[0]


def test_results_collected_before_val_auroc_are_refused(tmp_path):
    """A results.csv without `val_auroc` is refused with the command that collects it again, never
    read with the choice falling back to the test AUROC."""
    import csv

    import yaml

    from dpmammo.study.results import COLUMNS

    gan = made_studies(tmp_path)[0]
    study = tmp_path / "old-study"
    study.mkdir()
    (study / "study.yaml").write_text(yaml.safe_dump(gan.cfg.model_dump(mode="json"), allow_unicode=True))
    old_columns = [c for c in COLUMNS if c != "val_auroc"]
    with open(study / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(gan.rows)
    with pytest.raises(DpMammoError, match=r"no val_auroc column.*`cp .*study.yaml study-copy.yaml && dpmammo study "
                                           r"study-copy.yaml --out .*old-study` \(finished runs are reused, not retrained"):
        compare_studies([study], tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()


def test_only_shared_test_sets_are_compared(tmp_path):
    from dpmammo.report.compare import markdown, shared_test_sets

    a, b, _ = made_studies(tmp_path)
    b = StudyResults(b.label, b.path, b.cfg.model_copy(update={"test_sets": ["phantom/test", "other/test"]}), b.rows)
    shared, notes = shared_test_sets([a, b])
    assert shared == ["phantom/test"] and notes == ["`other/test` is left out: only dp-generator evaluated on it."]
    assert "## other/test" not in markdown([a, b]) and "## phantom/test" in markdown([a, b])
    c = StudyResults(b.label, b.path, b.cfg.model_copy(update={"test_sets": ["other/test"]}), b.rows)
    with pytest.raises(DpMammoError, match="share no test set"):
        shared_test_sets([a, c])


# --- end to end on two tiny studies ------------------------------------------------------------

@pytest.fixture(scope="module")
def two_studies(study_phantoms, tmp_path_factory) -> tuple[Path, Path]:
    """A study of a phantom 'synthetic' folder without provenance (no guarantee), and one of the
    real phantoms under DP at ε = 4 per patient (secret noise): one run each."""
    from dpmammo.study import run_study

    tmp = tmp_path_factory.mktemp("compare")
    folder = tmp / "phantom-gan"
    folder.mkdir()
    for i, p in enumerate(sorted((study_phantoms / "phantom" / "train").rglob("*.png"))[:64]):
        shutil.copy(p, folder / f"s{i}_{'malignant' if p.parent.name == 'is_benign_false' else 'benign'}.png")
    train = {"epochs": 1, "batch_size": 32, "device": "cpu"}
    gan = study_config(tiny_study_block(study_phantoms, name="gan-set", synthetic=str(folder),
                                        conditions=["synthetic"], epsilons=[4], train=train))
    real = study_config(tiny_study_block(study_phantoms, name="real-dp", conditions=["real"], epsilons=[4], train=train))
    dirs = tmp / "gan-set", tmp / "real-dp"
    for cfg, out in zip((gan, real), dirs):
        result = run_study(cfg, out, progress=False)
        assert not result.failed, [(o.run_id, o.error) for o in result.failed]
    return dirs


def test_compare_two_real_studies(two_studies, tmp_path):
    gan_dir, real_dir = two_studies
    gan = {r["run_id"]: r for r in read_csv(gan_dir / "results.csv")}["synthetic/pretrain/seed0"]
    real = {r["run_id"]: r for r in read_csv(real_dir / "results.csv")}["real/eps4/seed0"]
    assert gan["guarantee_total"] == "none" and real["guarantee_total"] == "dp" and real["unit"] == "patient"
    eps = float(real["epsilon_total"])
    assert 3.0 < eps <= 4.0
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "-m", "dpmammo.cli", "compare", str(gan_dir), str(real_dir),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (out / "comparison.md").read_text()
    assert "| study | condition | source | ε=4 per patient | non-private |" in md
    assert (f"| gan-set | synthetic | fixed set {gan_dir.parent / 'phantom-gan'} (no guarantee) |  | "
            f"{float(gan['auroc']):.3f} (no guarantee) |") in md
    assert (f"| real-dp | real | none (the private set only) | {float(real['auroc']):.3f} (ε≤{eps:.2f}/patient) |  |"
            ) in md
    # The validation AUROC of results.csv is the released model's, from its metrics.json.
    val = json.loads((real_dir / "real/eps4/seed0" / "metrics.json").read_text())["val"]["auroc"]
    assert float(real["val_auroc"]) == pytest.approx(val, abs=1e-12) and 0.0 <= val <= 1.0
    assert (f"Best with a full guarantee: ε=4 per patient: real-dp / real (validation AUROC {val:.3f}), test "
            f"{float(real['auroc']):.3f} (ε≤{eps:.2f}/patient); non-private: no cell has a DP chain total.") in md
    assert "per patient (all of a patient's patches)" in md
    page = (out / "comparison.html").read_text()
    assert '<table id="comparison-0">' in page and "fixed set" in page and "<style>" in page
    assert not list(out.glob(".*tmp"))
    # Ours is replaced only with --force; nothing of the inputs changed.
    with pytest.raises(DpMammoError, match="not empty"):
        compare_studies([gan_dir, real_dir], out)
    (out / "comparison.md").write_text("old")
    compare_studies([gan_dir, real_dir], out, force=True)
    assert (out / "comparison.md").read_text() == md


def test_compare_refusals(two_studies, tmp_path):
    gan_dir, real_dir = two_studies
    before = sorted(p.name for p in gan_dir.iterdir())
    for out in (gan_dir / "cmp", gan_dir, gan_dir.parent):
        with pytest.raises(DpMammoError, match="the study directory"):
            compare_studies([gan_dir, real_dir], out)
    assert sorted(p.name for p in gan_dir.iterdir()) == before
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(real_dir / "study.yaml", unfinished / "study.yaml")
    with pytest.raises(DpMammoError, match=r"is not finished \(no results.csv\); finish it, then compare: run "
                                           r"`dpmammo study` into it again"):
        compare_studies([gan_dir, unfinished], tmp_path / "cmp")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DpMammoError, match="not a study directory"):
        compare_studies([gan_dir, tmp_path / "empty"], tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(DpMammoError, match="not empty|not a folder written by `dpmammo compare`"):
            compare_studies([gan_dir, real_dir], theirs, force=force)
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]


def test_an_old_results_csv_is_collected_again_without_training(two_studies, tmp_path):
    """The command the refusal names works: a copy of study.yaml outside the folder, `dpmammo study`
    into it again; the finished run is reused (not retrained) and results.csv regains `val_auroc`."""
    import csv

    _, real_dir = two_studies
    old = tmp_path / "real-dp"
    shutil.copytree(real_dir, old)
    rows = read_csv(old / "results.csv")
    weights = (old / "real/eps4/seed0" / "model.safetensors").read_bytes()
    with open(old / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[c for c in rows[0] if c != "val_auroc"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DpMammoError, match="no val_auroc column"):
        compare_studies([old], tmp_path / "cmp")
    shutil.copy(old / "study.yaml", tmp_path / "study-copy.yaml")
    proc = subprocess.run([sys.executable, "-m", "dpmammo.cli", "study", str(tmp_path / "study-copy.yaml"),
                           "--out", str(old)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "400"})  # one line per message
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 runs (0 done, 1 cached, 0 failed, 0 skipped)" in proc.stdout, proc.stdout
    assert (old / "real/eps4/seed0" / "model.safetensors").read_bytes() == weights
    assert read_csv(old / "results.csv") == rows
    compare_studies([old], tmp_path / "cmp")
