"""dpmammo data extract: synthetic DICOMs with masses at known places → patches, labels, splits.

No real DICOM is in the repository: every file here is written with pydicom in a temporary folder
(a fake TCIA CBIS-DDSM download with its traps, and a generic table of phantom mammograms).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpmammo.config import parse_config
from dpmammo.data.extract import ExtractConfig, extract
from dpmammo.data.extract.config import PatchRecipe, SplitConfig
from dpmammo.data.extract.lesions import components
from dpmammo.data.extract.pixels import read_image
from dpmammo.data.extract.splits import LesionKey, assign_splits
from dpmammo.data.manifest import BENIGN, MALIGNANT, index_folder, read_manifest
from dpmammo.errors import DpMammoError
from tests.conftest import REPO

pydicom = pytest.importorskip("pydicom")

MG_STORAGE = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation


def write_dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 16, **tags) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MG_STORAGE
    ds.SOPClassUID = MG_STORAGE
    ds.Modality = "MG"
    ds.set_pixel_data(arr, photometric, bits)
    for key, value in tags.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def voi_lut(first: int, last: int):
    """A VOI LUT Sequence item: linear from `first` to `last` (stored values), clamped outside."""
    from pydicom.dataset import Dataset

    item = Dataset()
    n = last - first + 1
    item.LUTDescriptor = [n, first, 16]
    item.add_new(0x00283006, "US", [int(v) for v in np.linspace(0, 65535, n)])
    return item


def disk(shape, cx, cy, r) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


# ------------------------------------------------------------------ a fake TCIA CBIS-DDSM download

@dataclass(frozen=True)
class Mass:
    cx: int
    cy: int
    r: int


@dataclass(frozen=True)
class Case:
    series: str  # e.g. Mass-Training_P_00001_LEFT_CC
    patient: str
    pathology: str
    masses: tuple[Mass, ...]  # one mask per row; a row's mask may hold several masses
    kind: str = "m2-16"  # how the image is stored (see _image)
    rows: int = 1  # abnormalities (rows) on this image; masses are spread over them
    roi_order: str = "mask-first"  # mask-first | crop-first | crop-only | bad-crop
    mask_scale: float = 1.0
    corrupt: bool = False


SHAPE = (320, 256)
BG, MASS = 1000, 1400  # stored values before any inversion; artefact (a label) at 4000


def _image(case: Case) -> tuple[np.ndarray, str, int, dict]:
    rng = np.random.default_rng(zlib.crc32(case.series.encode()))
    img = BG + rng.integers(0, 80, SHAPE)
    for m in case.masses:
        img[disk(SHAPE, m.cx, m.cy, m.r)] = MASS + rng.integers(0, 40)
    tags: dict = {}
    if case.kind in ("voi-16", "window-12"):
        img[5:40, 200:250] = 4000  # a bright film label: min-max without the VOI would flatten the mass
    if case.kind == "voi-16":
        tags["VOILUTSequence"] = pydicom.sequence.Sequence([voi_lut(BG, MASS + 40)])
    if case.kind == "window-12":
        tags.update(WindowCenter=1220, WindowWidth=440, RescaleSlope=1, RescaleIntercept=0)
    if case.kind == "m1-12":  # MONOCHROME1: low stored value = bright; the mass is stored dark
        return (4095 - img).astype(np.uint16), "MONOCHROME1", 12, tags
    if case.kind == "m2-16":
        img = img * 16  # use the 16-bit range
    return img.astype(np.uint16), "MONOCHROME2", 12 if case.kind.endswith("12") else 16, tags


def _write_case(root: Path, case: Case) -> None:
    series_dir = root / "CBIS-DDSM" / case.series / "07-20-2016-DDSM-NA-12345" / "1.000000-full mammogram images-24515"
    arr, photometric, bits, tags = _image(case)
    path = write_dicom(series_dir / "1-1.dcm", arr, photometric, bits, **tags)
    if case.corrupt:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    per_row = np.array_split(np.arange(len(case.masses)), case.rows)
    for k, idx in enumerate(per_row, start=1):
        mask = np.zeros(SHAPE, dtype=np.uint8)
        for i in idx:
            m = case.masses[i]
            mask[disk(SHAPE, m.cx, m.cy, m.r)] = 255
        if case.mask_scale != 1.0:
            h, w = int(SHAPE[0] * case.mask_scale), int(SHAPE[1] * case.mask_scale)
            mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
        m0 = case.masses[idx[0]]
        crop = arr[m0.cy - 30:m0.cy + 30, m0.cx - 30:m0.cx + 30]
        roi_dir = root / "CBIS-DDSM" / f"{case.series}_{k}" / "07-21-2016-DDSM-NA-09887"
        mask_dir, crop_dir = roi_dir / "1.000000-ROI mask images-69196", roi_dir / "1.000000-cropped images-10947"
        names = {"mask-first": ("1-1.dcm", "1-2.dcm"), "crop-first": ("1-2.dcm", "1-1.dcm"),
                 "crop-only": (None, "1-1.dcm"), "bad-crop": ("1-1.dcm", "1-2.dcm")}[case.roi_order]
        if case.roi_order == "crop-first":  # the collection's trap: both in one series, names swapped
            mask_dir = crop_dir
        if names[0]:
            write_dicom(mask_dir / names[0], mask, "MONOCHROME2", 8)
        crop_path = write_dicom(crop_dir / names[1], crop, photometric, bits)
        if case.roi_order == "bad-crop":
            crop_path.write_bytes(b"this is not a DICOM file" * 10)


CASES = (
    Case("Mass-Training_P_00001_LEFT_CC", "P_00001", "MALIGNANT", (Mass(80, 100, 14),)),
    Case("Mass-Training_P_00001_RIGHT_MLO", "P_00001", "BENIGN", (Mass(80, 90, 12), Mass(170, 230, 16)),
         kind="m1-12", rows=2, roi_order="crop-first"),
    Case("Mass-Test_P_00002_LEFT_CC", "P_00002", "BENIGN_WITHOUT_CALLBACK", (Mass(120, 160, 15),), kind="voi-16"),
    Case("Mass-Test_P_00003_LEFT_MLO", "P_00003", "MALIGNANT", (Mass(100, 200, 18),), kind="window-12",
         mask_scale=0.95),
    Case("Mass-Training_P_00003_RIGHT_CC", "P_00003", "MALIGNANT", (Mass(90, 120, 15),)),
    Case("Mass-Training_P_00004_LEFT_CC", "P_00004", "MALIGNANT", (Mass(80, 85, 13), Mass(180, 240, 13))),
    Case("Mass-Training_P_00005_LEFT_CC", "P_00005", "BENIGN", (Mass(128, 160, 14),), corrupt=True),
    Case("Mass-Training_P_00006_LEFT_CC", "P_00006", "BENIGN", (Mass(128, 160, 14),), roi_order="bad-crop"),
    Case("Mass-Training_P_00007_LEFT_CC", "P_00007", "BENIGN", (Mass(100, 150, 14),), roi_order="crop-only"),
    *(Case(f"Mass-Training_P_{i:05d}_LEFT_CC", f"P_{i:05d}", "MALIGNANT" if i % 2 else "BENIGN",
           (Mass(90 + i, 150, 12 + i % 5),), kind="m2-16" if i % 3 else "m2-12") for i in range(10, 22)),
    Case("Mass-Test_P_00030_LEFT_CC", "P_00030", "BENIGN", (Mass(140, 140, 14),)),
    Case("Mass-Test_P_00031_LEFT_CC", "P_00031", "MALIGNANT", (Mass(110, 170, 15),), kind="m1-12"),
)


def _csv_rows(cases) -> dict[str, list[dict]]:
    """Rows as in the real description CSVs: paths with UIDs and 000000.dcm, trailing newlines."""
    out: dict[str, list[dict]] = {"train": [], "test": []}
    for c in cases:
        for k in range(1, c.rows + 1):
            uid = f"1.3.6.1.4.1.9590.100.1.2.{zlib.crc32(f'{c.series}{k}'.encode())}"
            out["train" if "Training" in c.series else "test"].append({
                "patient_id": c.patient, "breast_density": 2, "left or right breast": "LEFT",
                "image view": "CC", "abnormality id": k, "abnormality type": "mass", "mass shape": "OVAL",
                "mass margins": "CIRCUMSCRIBED", "assessment": 4, "pathology": c.pathology, "subtlety": 3,
                "image file path": f"{c.series}/{uid}.1/{uid}.2/000000.dcm",
                "cropped image file path": f"{c.series}_{k}/{uid}.3/{uid}.4/000000.dcm\n",
                "ROI mask file path": f"{c.series}_{k}/{uid}.3/{uid}.5/000001.dcm\n",
            })
    return out


@pytest.fixture(scope="module")
def cbis(tmp_path_factory):
    root = tmp_path_factory.mktemp("tcia")
    for case in CASES:
        _write_case(root / "download", case)
    csvs = []
    for split, rows in _csv_rows(CASES).items():
        path = root / f"mass_case_description_{split}_set.csv"
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        csvs.append(path)
    return root, csvs


def cbis_config(root, csvs, **over) -> ExtractConfig:
    d = {"source": {"kind": "cbis-ddsm", "csv": [str(c) for c in csvs], "dicom_root": str(root / "download")},
         "dataset": "cbis-ddsm", "split": {"mode": "source", "val_fraction": 0.3, "seed": 0}, "workers": 1}
    d.update(over)
    return parse_config(ExtractConfig, d, "test")


@pytest.fixture(scope="module")
def cbis_out(cbis, tmp_path_factory):
    root, csvs = cbis
    out = tmp_path_factory.mktemp("extracted") / "out"
    summary = extract(cbis_config(root, csvs, workers=2), out, progress=False)
    return out, summary


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _truth() -> dict[str, Case]:
    return {c.series: c for c in CASES}


def test_each_patch_is_centred_on_its_known_mass(cbis_out):
    out, _ = cbis_out
    rows = read_rows(out / "lesions.csv")
    truth = _truth()
    assert len(rows) == 22  # 25 masses: one corrupt image, one crop without mask, one train/test overlap
    for row in rows:
        series = Path(row["image"]).parts[-4]
        case = truth[series]
        # the mass this lesion is: the one whose centre lies in the lesion box
        x, y, w, h = (int(row[k]) for k in ("x", "y", "width", "height"))
        (mass,) = [m for m in case.masses if x <= m.cx < x + w and y <= m.cy < y + h]
        # geometry: the crop holds ≥ 90% of the mass pixels (in fact all of them)
        cx, cy, side = int(row["crop_x"]), int(row["crop_y"]), int(row["crop_side"])
        mass_px = disk(SHAPE, mass.cx, mass.cy, mass.r)
        inside = mass_px[max(cy, 0):cy + side, max(cx, 0):cx + side].sum()
        assert inside >= 0.9 * mass_px.sum(), row
        # pixels: after the MONOCHROME1 inversion / VOI LUT / window, the mass is the bright blob in
        # the middle of the patch, about as big as the mass scaled to 128 px
        patch = np.asarray(Image.open(out / row["path"]))
        assert patch.shape == (128, 128)
        bright = patch > 160
        ys, xs = np.nonzero(bright)
        expect_x = (mass.cx - cx) * 128 / side
        expect_y = (mass.cy - cy) * 128 / side
        assert abs(xs.mean() - expect_x) < 2 and abs(ys.mean() - expect_y) < 2, (row, xs.mean(), ys.mean())
        assert abs(expect_x - 64) < 3 and abs(expect_y - 64) < 3, row  # centred (no edge shift here)
        area = np.pi * mass.r**2 * (128 / side) ** 2
        assert 0.75 * area <= bright.sum() <= 1.3 * area, (row, bright.sum(), area)


def test_labels_patients_and_layout_read_back_by_the_indexer(cbis_out):
    out, summary = cbis_out
    records = index_folder(out)  # what `dpmammo data index` reads, unchanged
    manifest = read_manifest(out / "patches.csv")
    assert sorted((r.path, r.label, r.patient, r.split) for r in manifest) == sorted(
        (str(Path(r.path).relative_to(out)), r.label, r.patient, r.split) for r in records)
    truth = _truth()
    want = {"MALIGNANT": MALIGNANT, "BENIGN": BENIGN, "BENIGN_WITHOUT_CALLBACK": BENIGN}
    for row in read_rows(out / "lesions.csv"):
        case = truth[Path(row["image"]).parts[-4]]
        assert int(row["label"]) == want[case.pathology]
        assert row["patient"] == case.patient
        name = Path(row["path"]).name
        assert name.startswith(f"patientcbis-ddsm__{case.patient}_image")
        assert Path(row["path"]).parent.name == ("is_benign_false" if want[case.pathology] else "is_benign_true")
    by_patient = {r.patient for r in records}
    assert "cbis-ddsm__P_00001" in by_patient and "cbis-ddsm__P_00005" not in by_patient
    assert summary["patches"] == len(records)
    cfg = json.loads((out / "extract.json").read_text())["config"]
    assert cfg["recipe"] == PatchRecipe().model_dump(mode="json") and cfg["split"]["mode"] == "source"


def test_source_split_keeps_test_and_draws_val_from_train_by_patient(cbis_out):
    out, _ = cbis_out
    rows = read_rows(out / "lesions.csv")
    split_of = defaultdict(set)
    for r in rows:
        split_of[r["patient"]].add(r["split"])
        if r["source_split"] == "test":
            assert r["split"] == "test"
        else:
            assert r["split"] in ("train", "val")
    assert all(len(s) == 1 for s in split_of.values()), split_of  # patient-disjoint
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    # P_00003 has a Training and a Test image: its training lesion is left out, and said so
    assert split_of["P_00003"] == {"test"}
    skipped = read_rows(out / "skipped.csv")
    assert any("Mass-Training_P_00003_RIGHT_CC" in s["file"] and "also in a later source split" in s["reason"]
               for s in skipped)


def test_mask_and_crop_are_told_apart_by_content(cbis_out):
    out, _ = cbis_out
    rows = read_rows(out / "lesions.csv")
    masks = {Path(r["image"]).parts[-4]: r for r in rows}
    # names swapped (the mask is 1-2.dcm beside the crop 1-1.dcm): the binary full-size one is used
    swapped = [r for r in rows if "P_00001_RIGHT_MLO" in r["image"]]
    assert len(swapped) == 2 and all(Path(r["mask"]).name == "1-2.dcm" for r in swapped)
    # a damaged crop beside a good mask does not cost the lesion
    assert "Mass-Training_P_00006_LEFT_CC" in masks
    # a mask 5% smaller than its image is resized to it
    assert masks["Mass-Test_P_00003_LEFT_MLO"]["mask_resized"] == "1"
    assert masks["Mass-Training_P_00010_LEFT_CC"]["mask_resized"] == "0"
    # one mask with two separate masses gives two lesions
    assert sum("P_00004" in r["image"] for r in rows) == 2


def test_corrupt_and_maskless_files_land_in_skipped_csv_with_reasons(cbis_out):
    out, _ = cbis_out
    skipped = read_rows(out / "skipped.csv")
    corrupt = [s for s in skipped if "P_00005" in s["file"]]
    assert len(corrupt) == 1 and corrupt[0]["file"].endswith("1-1.dcm")
    assert "DICOM" in corrupt[0]["reason"] or "pixel data" in corrupt[0]["reason"]
    assert "line" in corrupt[0]["annotation"]
    maskless = [s for s in skipped if "P_00007" in s["file"]]
    assert len(maskless) == 1 and "no ROI mask" in maskless[0]["reason"] and "a crop" in maskless[0]["reason"]


def test_fraction_split_is_patient_disjoint_and_stratified():
    rng = np.random.default_rng(3)
    keys = []
    for p in range(300):
        label = int(rng.uniform() < 0.45)
        for _ in range(int(rng.integers(1, 4))):
            keys.append(LesionKey(f"p{p}", label if rng.uniform() < 0.9 else 1 - label, None))
    splits, dropped = assign_splits(keys, SplitConfig(fractions=(0.7, 0.1, 0.2), seed=5))
    assert dropped == 0
    where = defaultdict(set)
    for k, s in zip(keys, splits):
        where[k.patient].add(s)
    assert all(len(s) == 1 for s in where.values())
    total = Counter(k.label for k in keys)
    for name, frac in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        got = Counter(k.label for k, s in zip(keys, splits) if s == name)
        for label in (0, 1):  # each class close to its share in every split
            assert abs(got[label] / total[label] - frac) < 0.03, (name, label, got, total)
    again, _ = assign_splits(keys, SplitConfig(fractions=(0.7, 0.1, 0.2), seed=5))
    other, _ = assign_splits(keys, SplitConfig(fractions=(0.7, 0.1, 0.2), seed=6))
    assert again == splits and other != splits


def test_read_image_applies_monochrome1_voi_lut_and_window(tmp_path):
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (4, 1))  # 0..4080
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1", 12))
    assert m1.region(0, 0, 4)[0, 0] == 255 and m1.region(0, 252, 4)[0, 3] == 0  # low stored value = white
    win = read_image(write_dicom(tmp_path / "w.dcm", ramp, "MONOCHROME2", 12, WindowCenter=2048, WindowWidth=1024))
    row = win.region(0, 0, 256)[0]
    assert row[:96].max() == 0 and row[160:].min() == 255 and 0 < row[128] < 255  # clipped outside [1536, 2560]
    voi = read_image(write_dicom(tmp_path / "v.dcm", ramp, "MONOCHROME2", 12,
                                 VOILUTSequence=pydicom.sequence.Sequence([voi_lut(1000, 2000)])))
    row = voi.region(0, 0, 256)[0]
    assert row[:62].max() == 0 and row[126:].min() == 255


def test_components_join_fragments_and_drop_specks():
    mask = np.zeros((400, 400), dtype=bool)
    mask[100:140, 100:130] = True
    mask[100:140, 136:160] = True  # a fragment 6 px away: joined by the closing
    mask[300:340, 300:340] = True  # a second lesion
    mask[10, 10] = True  # a speck
    comps, notes = components(mask, PatchRecipe())
    assert sorted(c.box for c in comps) == [(100, 100, 60, 40), (300, 300, 40, 40)]
    assert len(notes) == 1 and "1 mask px" in notes[0]
    apart, _ = components(mask, PatchRecipe(closing_radius=0))
    assert len(apart) == 3


def _dpmammo(*args):
    return subprocess.run([sys.executable, "-m", "dpmammo.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_nothing_readable_is_a_one_line_error_and_leaves_nothing(tmp_path):
    img = tmp_path / "a.dcm"
    img.write_bytes(b"garbage" * 50)
    (tmp_path / "t.csv").write_text("image,patient,label,x,y,width,height\na.dcm,p1,1,10,10,20,20\n")
    r = _dpmammo("data", "extract", "csv", "--table", tmp_path / "t.csv", "--dataset", "h", "--out", tmp_path / "out",
                 "--workers", 1)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "nothing could be read" in errors[0] and "a.dcm" in errors[0], r.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary folder left


def test_existing_out_is_refused_unless_forced(cbis, tmp_path):
    root, csvs = cbis
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DpMammoError, match="exists and is not empty"):
        extract(cbis_config(root, csvs), out, progress=False)
    with pytest.raises(DpMammoError, match="is not a folder written by `dpmammo data extract`"):
        extract(cbis_config(root, csvs), out, force=True, progress=False)  # --force replaces only its own output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    out = tmp_path / "extracted"
    extract(cbis_config(root, csvs), out, progress=False)
    (out / "keep.txt").write_text("stale")
    lines: list[str] = []
    extract(cbis_config(root, csvs), out, force=True, progress=True, write=lines.append)
    assert not (out / "keep.txt").exists() and (out / "extract.json").is_file()
    assert 1 <= len(lines) <= 11 and lines[-1].startswith("extract: 23/23 images (100%)")  # plain lines, no TTY


def test_square_crop_margin_min_side_and_jitter():
    from dpmammo.data.extract.lesions import square_crop

    recipe = PatchRecipe()
    assert square_crop((200, 300, 20, 40), (1000, 800), recipe, None) == square_crop(
        (200, 300, 20, 40), (1000, 800), recipe, np.random.default_rng(0))  # jitter off by default
    c = square_crop((200, 300, 20, 40), (1000, 800), recipe, None)
    assert c.side == 40 + 2 * 60 and (c.x, c.y) == (130, 240)  # longer side + 2 margins, centred
    assert square_crop((200, 300, 4, 4), (1000, 800), recipe, None).side == 128  # min_side
    edge = square_crop((2, 3, 20, 20), (1000, 800), recipe, None)
    assert (edge.x, edge.y) == (0, 0)  # moved back inside the image, as the reference does
    jit = PatchRecipe(jitter=0.1)
    a = square_crop((200, 300, 20, 40), (1000, 800), jit, np.random.default_rng(1))
    b = square_crop((200, 300, 20, 40), (1000, 800), jit, np.random.default_rng(1))
    assert a == b and a != c and abs(a.x - c.x) <= 16 and abs(a.y - c.y) <= 16


def test_compressed_dicoms_are_decoded(tmp_path):
    from pydicom.uid import JPEG2000Lossless, RLELossless

    arr = np.full((64, 64), 1000, dtype=np.uint16)
    arr[20:40, 20:40] = 3000
    syntaxes = [RLELossless]  # decoded by pydicom itself
    try:
        import openjpeg  # noqa: F401  (the dicom extra: pylibjpeg-openjpeg)

        syntaxes.append(JPEG2000Lossless)
    except ImportError:
        pass
    for syntax in syntaxes:
        path = write_dicom(tmp_path / f"{syntax.name[:4]}.dcm", arr, "MONOCHROME2", 12)
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path)
        img = read_image(path)
        assert img.region(0, 0, 64)[30, 30] == 255 and img.region(0, 0, 64)[5, 5] == 0, syntax.name


def test_generic_table_with_boxes_masks_tiff_png_and_source_split(tmp_path):
    rows = ["image,patient,label,mask,x,y,width,height,split"]
    for i in range(8):
        img = np.full((300, 300), 2000 + 10 * i, dtype=np.uint16)
        img[100:140, 150:190] = 9000  # a square mass at x 150..189, y 100..139
        malignant = i % 2 == 0
        if i < 4:  # 16-bit TIFF with a box
            Image.fromarray(img).save(tmp_path / f"i{i}.tif")
            rows.append(f"i{i}.tif,q{i},{int(malignant)},,150,100,40,40,{'test' if i in (0, 1) else 'train'}")
        else:  # 8-bit PNG with a mask
            Image.fromarray((img // 40).astype(np.uint8)).save(tmp_path / f"i{i}.png")
            mask = np.zeros((300, 300), dtype=np.uint8)
            mask[100:140, 150:190] = 1
            Image.fromarray(mask).save(tmp_path / f"m{i}.png")
            rows.append(f"i{i}.png,q{i},{'malignant' if malignant else 'benign'},m{i}.png,,,,,train")
    rows.append("gone.png,q9,1,,1,1,5,5,train")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    cfg = parse_config(ExtractConfig, {"source": {"kind": "csv", "table": str(tmp_path / "t.csv")}, "dataset": "hosp",
                                       "split": {"mode": "source", "val_fraction": 0.4}, "workers": 1}, "test")
    extract(cfg, tmp_path / "out", progress=False)
    lesions = read_rows(tmp_path / "out" / "lesions.csv")
    assert len(lesions) == 8
    for row in lesions:
        assert (row["x"], row["y"], row["width"], row["height"]) == ("150", "100", "40", "40")
        assert (row["crop_x"], row["crop_y"], row["crop_side"]) == ("90", "40", "160")  # 40 + 2·60, centred
        patch = np.asarray(Image.open(tmp_path / "out" / row["path"]))
        assert patch[50:78, 50:78].min() >= 250 and patch[:40].max() < 60  # the mass, centred (32 px)
    split = {r["patient"]: r["split"] for r in lesions}
    assert split["q0"] == split["q1"] == "test" and {split[f"q{i}"] for i in range(2, 8)} == {"train", "val"}
    skipped = read_rows(tmp_path / "out" / "skipped.csv")
    assert [(Path(s["file"]).name, s["reason"]) for s in skipped] == [("gone.png", "image file not found")]


@pytest.mark.parametrize("line,fragment", [
    ("a.png,p1,maybe,,1,1,5,5", "t.csv line 2: label 'maybe' must be 1/malignant or 0/benign"),
    ("a.png,p1,1,m.png,1,1,5,5", "t.csv line 2: give a mask or a box"),
    ("a.png,p1,1,,1,1,,5", "t.csv line 2: a box needs all of x, y, width, height"),
])
def test_bad_table_rows_are_refused_naming_the_line(tmp_path, line, fragment):
    (tmp_path / "t.csv").write_text("image,patient,label,mask,x,y,width,height\n" + line + "\n")
    cfg = parse_config(ExtractConfig, {"source": {"kind": "csv", "table": str(tmp_path / "t.csv")}, "dataset": "h",
                                       "workers": 1}, "test")
    with pytest.raises(DpMammoError, match=fragment.replace("(", r"\(")):
        extract(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_unknown_pathology_and_config_keys_are_refused(cbis, tmp_path):
    root, csvs = cbis
    bad = tmp_path / "bad.csv"
    bad.write_text(csvs[0].read_text().replace("BENIGN_WITHOUT_CALLBACK", "UNPROVEN").replace(",BENIGN,", ",MAYBE,", 1))
    with pytest.raises(DpMammoError, match=r"bad.csv line \d+: pathology 'MAYBE' is not one of MALIGNANT"):
        extract(cbis_config(root, [bad]), tmp_path / "out", progress=False)
    with pytest.raises(DpMammoError, match="recipe.margn: unknown key"):
        cbis_config(root, csvs, recipe={"margn": 3})
    with pytest.raises(DpMammoError, match="sum to 1"):
        cbis_config(root, csvs, split={"fractions": [0.5, 0.5, 0.5]})


# ------------------------------------------------------------------ generic table, phantom mammograms

def _phantom_set(root: Path, n_images: int) -> Path:
    """16-bit DICOM mammograms with two phantom masses each (one class per patient), PNG masks, a table."""
    from dpmammo.data.phantoms import make_patch

    rows = []
    for i in range(n_images):
        malignant = i % 2 == 0
        tiles = [make_patch(np.random.default_rng([11, i, j]), malignant, 128) for j in range(2)]
        img = np.full((256, 512), np.mean(tiles), dtype=np.float32)  # the tiles' mean grey around them
        mask = np.zeros((256, 512), dtype=np.uint8)
        for tile, cx in zip(tiles, (128, 384)):
            img[64:192, cx - 64:cx + 64] = tile
            mask[disk(mask.shape, cx, 128, 24)] = 255
        write_dicom(root / f"img{i}.dcm", (img * 257).astype(np.uint16), "MONOCHROME2", 16)
        Image.fromarray(mask).save(root / f"mask{i}.png")
        rows.append(f"img{i}.dcm,patient{i},{'malignant' if malignant else 'benign'},mask{i}.png,,,,")
    (root / "table.csv").write_text("image,patient,label,mask,x,y,width,height\n" + "\n".join(rows) + "\n")
    return root / "table.csv"


def test_training_on_extracted_phantoms_reaches_the_phantom_auroc_bar(tmp_path):
    import torch

    from dpmammo.train import TrainConfig, fit

    table = _phantom_set(tmp_path / "src", 300)
    cfg = parse_config(ExtractConfig, {
        "source": {"kind": "csv", "table": str(table)}, "dataset": "phantom-dicom",
        "recipe": {"margin": 40}, "split": {"fractions": [0.7, 0.3, 0.0], "seed": 1}, "workers": 1}, "test")
    summary = extract(cfg, tmp_path / "out", progress=False)
    sets = {s["set"]: s for s in summary["sets"]}
    assert set(sets) == {"phantom-dicom/train", "phantom-dicom/val"}
    assert sets["phantom-dicom/train"]["patches"] + sets["phantom-dicom/val"]["patches"] == 600
    val_share = sets["phantom-dicom/val"]["malignant"] / sets["phantom-dicom/val"]["patches"]
    assert abs(val_share - 0.5) < 0.05  # stratified
    torch.set_num_threads(1)
    train_cfg = parse_config(TrainConfig, {
        "data": {"root": str(tmp_path / "out"), "train": ["phantom-dicom/train"], "val": "phantom-dicom/val"},
        "model": {"name": "cnn-small", "input_size": 64, "width": 16},
        "optim": {"lr": 2e-3}, "train": {"epochs": 15, "batch_size": 32, "seed": 0}}, "test")
    m = fit(train_cfg, tmp_path / "run", progress=False)
    assert m["val"]["auroc"] >= 0.9, m["val"]
