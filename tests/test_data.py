"""dpmammo.data: indexing the published layout, labels, refusals, loading, phantoms."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpmammo.data.images import load_images, load_labels
from dpmammo.data.manifest import BENIGN, MALIGNANT, index_folder, select, summarize
from dpmammo.data.phantoms import make_phantoms
from dpmammo.errors import DpMammoError

# SOURCE.md of the data folder: set -> (patches, malignant, benign, patients)
SOURCE_COUNTS = {
    "cbis-ddsm/train": (1104, 525, 579, 578),
    "cbis-ddsm/val": (192, 102, 90, 102),
    "cbis-ddsm/test": (402, 157, 245, 212),
    "bcdr/test": (1106, 486, 620, 394),
    "synthetic/c-dcgan": (3000, 1500, 1500, 0),
}


@pytest.fixture(scope="module")
def real_records(real_root):
    return index_folder(real_root)


def _png(path: Path, value: int = 128, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path)
    return path


def _published(root: Path, dataset: str, split: str, patient: str, malignant: bool, i: int = 0,
               value: int = 128) -> Path:
    folder = "is_benign_false" if malignant else "is_benign_true"
    name = f"patient{patient}_image{i}_mass{i}_is_benign_{0 if malignant else 1}.png"
    return _png(root / dataset / split / folder / name, value)


# ---------------------------------------------------------------- the real data set

def test_real_counts_match_source(real_records):
    got = {r["set"]: (r["patches"], r["malignant"], r["benign"], r["patients"]) for r in summarize(real_records)}
    assert got == SOURCE_COUNTS


def test_real_sources_and_patients(real_records):
    by_set = {r["set"]: r["source"] for r in summarize(real_records)}
    assert by_set["synthetic/c-dcgan"] == "synthetic"
    assert {by_set[s] for s in SOURCE_COUNTS if not s.startswith("synthetic")} == {"real"}
    # Every real patch has a patient id; synthetic ones have none.
    assert all(r.patient for r in real_records if r.source == "real")
    assert not any(r.patient for r in real_records if r.source == "synthetic")


def test_real_labels_follow_folders(real_records):
    for r in real_records:
        parent = Path(r.path).parent.name
        if parent == "is_benign_false":
            assert r.label == MALIGNANT and r.path.endswith("_is_benign_0.png")
        elif parent == "is_benign_true":
            assert r.label == BENIGN and r.path.endswith("_is_benign_1.png")
        else:
            assert r.label == (MALIGNANT if r.path.endswith("_malignant.png") else BENIGN)


def test_real_malignant_file_gets_label_1(real_records):
    mal = next(r for r in real_records if Path(r.path).parent.name == "is_benign_false")
    assert mal.label == 1
    ben = next(r for r in real_records if Path(r.path).parent.name == "is_benign_true")
    assert ben.label == 0


def test_real_images_load(real_records):
    recs = select(real_records, "cbis-ddsm/val")[:16]
    x = load_images(recs, 64)
    assert x.shape == (16, 1, 64, 64) and str(x.dtype) == "torch.uint8"
    assert load_labels(recs).tolist() == [r.label for r in recs]


# ---------------------------------------------------------------- refusals on small folders

def _valid_tree(root: Path) -> None:
    for split, pid in (("train", "A"), ("test", "B")):
        _published(root, "ds", split, pid, malignant=True, i=1)
        _published(root, "ds", split, pid, malignant=False, i=2)


def test_small_valid_tree(tmp_path):
    _valid_tree(tmp_path)
    recs = index_folder(tmp_path)
    assert [(r["set"], r["patches"], r["malignant"], r["patients"]) for r in summarize(recs)] == [
        ("ds/test", 2, 1, 1), ("ds/train", 2, 1, 1)]
    assert {Path(r.path).parent.name: r.label for r in recs} == {"is_benign_false": 1, "is_benign_true": 0}


def test_patient_overlap_is_refused(tmp_path):
    _valid_tree(tmp_path)
    _published(tmp_path, "ds", "test", "A", malignant=True, i=9)  # patient A also in train
    with pytest.raises(DpMammoError) as e:
        index_folder(tmp_path)
    msg = str(e.value)
    assert "'A'" in msg and "train" in msg and "test" in msg


def test_same_patient_in_two_datasets_is_fine(tmp_path):
    _valid_tree(tmp_path)
    _published(tmp_path, "other", "train", "A", malignant=True, i=3)
    _published(tmp_path, "other", "train", "A", malignant=False, i=4)
    assert len(index_folder(tmp_path)) == 6


def test_corrupt_png_names_the_file(tmp_path):
    _valid_tree(tmp_path)
    bad = tmp_path / "ds" / "train" / "is_benign_true" / "patientC_image5_mass5_is_benign_1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    recs = index_folder(tmp_path)  # indexing does not open files
    with pytest.raises(DpMammoError) as e:
        load_images(recs, 8)
    assert str(bad) in str(e.value)


def test_empty_class_is_refused(tmp_path):
    _published(tmp_path, "ds", "train", "A", malignant=False, i=1)
    _published(tmp_path, "ds", "train", "B", malignant=False, i=2)
    with pytest.raises(DpMammoError, match=r"empty class: ds/train has no malignant"):
        index_folder(tmp_path)


def test_unknown_layout_is_refused(tmp_path):
    _valid_tree(tmp_path)
    _png(tmp_path / "ds" / "train" / "misc" / "scan_001.png")
    with pytest.raises(DpMammoError, match="unknown layout"):
        index_folder(tmp_path)


def test_label_conflict_is_refused(tmp_path):
    _valid_tree(tmp_path)
    # A file named malignant (is_benign_0) sitting in the benign folder.
    _png(tmp_path / "ds" / "train" / "is_benign_true" / "patientA_image7_mass7_is_benign_0.png")
    with pytest.raises(DpMammoError, match="label conflict"):
        index_folder(tmp_path)


def test_missing_root_and_empty_root(tmp_path):
    with pytest.raises(DpMammoError, match="not found"):
        index_folder(tmp_path / "nope")
    with pytest.raises(DpMammoError, match="no patches"):
        index_folder(tmp_path)


def test_synthetic_suffix_labels(tmp_path):
    _png(tmp_path / "synthetic" / "gan" / "batch_0_0_malignant.png")
    _png(tmp_path / "synthetic" / "gan" / "batch_0_1_benign.png")
    recs = index_folder(tmp_path)
    assert {Path(r.path).name: (r.label, r.source, r.set_name) for r in recs} == {
        "batch_0_0_malignant.png": (1, "synthetic", "synthetic/gan"),
        "batch_0_1_benign.png": (0, "synthetic", "synthetic/gan"),
    }


# ---------------------------------------------------------------- phantoms

def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_phantoms_deterministic(tmp_path):
    a = make_phantoms(tmp_path / "a", n=8, seed=0)
    b = make_phantoms(tmp_path / "b", n=8, seed=0)
    c = make_phantoms(tmp_path / "c", n=8, seed=1)
    assert a == tmp_path / "a"
    ta, tb, tc = _tree_bytes(a), _tree_bytes(b), _tree_bytes(c)
    assert len(ta) == 16 and ta == tb
    # A different seed changes the images (labels may land in other files too).
    assert sorted(ta.values()) != sorted(tc.values())
    assert not set(ta.values()) & set(tc.values())


def test_phantoms_layout_counts_and_index(tmp_path):
    out = make_phantoms(tmp_path, n=12, seed=3, size=64)
    recs = index_folder(out)
    rows = {r["set"]: (r["patches"], r["malignant"], r["benign"], r["patients"]) for r in summarize(recs)}
    assert rows == {"phantom/train": (12, 6, 6, 12), "phantom/val": (6, 3, 3, 6), "phantom/test": (6, 3, 3, 6)}
    assert len({r.patient for r in recs}) == len(recs)  # patient-disjoint, one patient per patch
    for r in recs:
        with Image.open(r.path) as im:
            assert im.mode == "L" and im.size == (64, 64)
    # Re-running needs --force, then replaces the folder instead of mixing old and new files.
    with pytest.raises(DpMammoError, match="pass --force"):
        make_phantoms(tmp_path, n=4, seed=3, size=64)
    assert len(index_folder(tmp_path)) == 24
    make_phantoms(tmp_path, n=4, seed=3, size=64, force=True)
    assert len(index_folder(tmp_path)) == 8
    # A file of the user's inside: never replaced, even with --force.
    mine = tmp_path / "phantom" / "train" / "notes.txt"
    mine.write_text("mine")
    with pytest.raises(DpMammoError, match="not phantom patches"):
        make_phantoms(tmp_path, n=4, seed=3, size=64, force=True)
    assert mine.read_text() == "mine" and len(index_folder(tmp_path)) == 8


def test_phantoms_reject_tiny_n(tmp_path):
    with pytest.raises(DpMammoError):
        make_phantoms(tmp_path, n=2)


def test_phantoms_need_shape_not_brightness(tmp_path):
    """Raw pixels are a weak linear signal; mean intensity none; boundary shape a strong one."""
    import scipy.ndimage as ndi
    import sklearn.linear_model as sk
    import sklearn.metrics as metrics
    recs = index_folder(make_phantoms(tmp_path, n=200, seed=0))
    tr, te = select(recs, "phantom/train"), select(recs, "phantom/test")
    xtr = load_images(tr, 32).flatten(1).float().numpy() / 255
    xte = load_images(te, 32).flatten(1).float().numpy() / 255
    ytr, yte = load_labels(tr).numpy(), load_labels(te).numpy()
    lr = sk.LogisticRegression(C=1.0, max_iter=3000).fit(xtr, ytr)
    auc_pixels = metrics.roc_auc_score(yte, lr.predict_proba(xte)[:, 1])
    full = load_images(te, 128)[:, 0].float().numpy() / 255
    auc_mean = metrics.roc_auc_score(yte, full.mean(axis=(1, 2)))

    def compactness(im):  # perimeter^2 / (4 pi area) of the brightest blob: 1 for a disc
        sm = ndi.gaussian_filter(im, 1.0)
        med = np.median(sm)
        lab, n = ndi.label(sm > med + 0.5 * (sm.max() - med))
        blob = lab == (np.argmax(ndi.sum(np.ones_like(sm), lab, range(1, n + 1))) + 1)
        perimeter = (blob ^ ndi.binary_erosion(blob)).sum()
        return perimeter**2 / (4 * np.pi * blob.sum())

    auc_shape = metrics.roc_auc_score(yte, [compactness(im) for im in full])
    assert auc_pixels < 0.8
    assert abs(auc_mean - 0.5) < 0.1
    assert auc_shape > 0.75
    assert auc_shape > auc_pixels + 0.1
