"""`dpmammo compare`: finished studies side by side at equal ε, per shared test set.

The table logic is checked on rows made here (which cell is best with a guarantee at each ε, that
a cell without a guarantee or over its ε never wins, mean ± std, ε of another unit in its own
column); then two tiny phantom studies (a fixed synthetic folder without provenance, and real
patches under DP with secret noise) are run once and compared end to end, with the refusals.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpmammo.errors import DpMammoError
from dpmammo.report.compare import (Column, StudyResults, all_columns, best_guaranteed, compare_studies,
                                    comparison_grid, is_guaranteed, cells)
from tests.conftest import read_csv, study_config, tiny_study_block


def row(cond, eps, seed, auroc, guarantee="dp", total=None, unit="patient", test_set="phantom/test"):
    """One results.csv row as read_results gives it back."""
    return {"condition": cond, "run_id": f"{cond}/{eps}/seed{seed}", "stage": "x", "test_set": test_set,
            "status": "ok", "epsilon_target": float(eps), "guarantee_total": guarantee,
            "epsilon_total": (total if total is not None else float(eps)) if guarantee == "dp" else None,
            "unit": unit if guarantee == "dp" else None, "seed": seed, "auroc": auroc}


def made_studies(tmp_path: Path) -> list[StudyResults]:
    """Three studies of rows made here: the shipped-set kind (no guarantee), a DP generator and a
    procedural prior at ε per patch."""
    base = tiny_study_block(tmp_path / "data", seeds=[0, 1])
    gan = study_config({**base, "name": "gan-set", "synthetic": str(tmp_path / "no-such-folder"),
                        "conditions": ["real", "synthetic->real"], "epsilons": [1, 6, "inf"]})
    gan_rows = [row("real", 1, s, a, total=0.99) for s, a in ((0, 0.55), (1, 0.57))]
    gan_rows += [row("synthetic→real", 1, s, a, guarantee="none") for s, a in ((0, 0.70), (1, 0.72))]
    gan_rows += [row("real", 6, s, a, total=5.9) for s, a in ((0, 0.60), (1, 0.62))]
    gan_rows += [row("synthetic→real", 6, s, 0.71, guarantee="none") for s in (0, 1)]
    gan_rows += [row(c, "inf", s, 0.73, guarantee="none") for c in ("real", "synthetic→real") for s in (0, 1)]
    dp_gen = study_config({**base, "name": "dp-generator", "conditions": ["synthetic->real"], "epsilons": [1, 6],
                           "synthetic": {"generator": {"generator": "dp-merf", "privacy": {"target_epsilon": 1}},
                                         "generator_share": 0.5}})
    dp_rows = [row("synthetic→real", 1, s, a, total=1.0) for s, a in ((0, 0.58), (1, 0.60))]
    dp_rows += [row("synthetic→real", 6, s, 0.66, total=6.4) for s in (0, 1)]  # over its ε: never counts
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
    # Best with a full guarantee: the no-guarantee rows (0.71–0.73) never win, nor the DP
    # generator's 0.66 at ε = 6 (its total 6.4 is over 6); the per-patch prior only in its column.
    assert best_guaranteed(studies, "phantom/test", columns) == [
        "ε=1 per patch: prior / prior→real, 0.900 (ε≤1.00/patch)",
        "ε=1 per patient: dp-generator / synthetic→real, 0.590 ± 0.010 (ε≤1.00/patient)",
        "ε=6 per patient: gan-set / real, 0.610 ± 0.010 (ε≤5.90/patient)",
        "non-private: no cell has a DP chain total"]
    # A per-patch total does not hold per patient; a per-patient one holds per patch.
    prior_cell = cells(studies[2], "phantom/test")[("prior→real", Column(1.0, "patch"))]
    assert not is_guaranteed(prior_cell, Column(1.0, "patient")) and is_guaranteed(prior_cell, Column(1.0, "patch"))
    patient_cell = cells(studies[1], "phantom/test")[("synthetic→real", Column(1.0, "patient"))]
    assert is_guaranteed(patient_cell, Column(1.0, "patch")) and not is_guaranteed(patient_cell, Column(0.5, "patient"))


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
    assert (f"Best with a full guarantee: ε=4 per patient: real-dp / real, {float(real['auroc']):.3f} "
            f"(ε≤{eps:.2f}/patient); non-private: no cell has a DP chain total.") in md
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
    with pytest.raises(DpMammoError, match=r"is not finished \(no results.csv\); finish it with `dpmammo study"):
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
