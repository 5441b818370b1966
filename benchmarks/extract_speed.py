"""How fast is `dpmammo data extract cbis-ddsm` on a collection of CBIS-DDSM's size?

Writes a fake TCIA download (the same folder layout, CSV naming traps and file kinds as the
real one: 16-bit full mammograms, 8-bit 0/255 ROI masks of the same size, small grey-level
crops, mask and crop names swapped in a third of the series) with `--lesions` series folders,
then times `extract` with each `--workers` value and prints lesions per second and the speed-up.

Disk: the real mass subset is ~45 MB per lesion (image + mask), about 75 GB for 1,700 lesions.
To keep the benchmark on one disk, only `--unique` distinct image/mask/crop triples are written;
the series folders hard-link to them. Before every timed run the distinct files are evicted from
the page cache (posix_fadvise DONTNEED, own files only), so each distinct file is read cold once
and its other links warm: the timings are decoding-bound. The cold read rate of the distinct
files is measured on its own and printed with the I/O time it implies for distinct files.

    python benchmarks/extract_speed.py --lesions 1700 --unique 200 --workers 1 --workers 2

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MG = "1.2.840.10008.5.1.4.1.1.1.2"


def write_dicom(path: Path, arr: np.ndarray, bits: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MG
    ds.SOPClassUID = MG
    ds.Modality = "MG"
    ds.set_pixel_data(arr, "MONOCHROME2", bits)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make_unique(folder: Path, k: int, rows: int, cols: int) -> tuple[Path, Path, Path]:
    """One mammogram (16-bit, a breast-shaped region and a mass), its 0/255 mask and a crop."""
    rng = np.random.default_rng(k)
    yy, xx = np.ogrid[:rows, :cols]
    breast = ((xx / (0.8 * cols)) ** 2 + ((yy - rows / 2) / (0.45 * rows)) ** 2) <= 1
    img = np.zeros((rows, cols), dtype=np.uint16)
    img[breast] = rng.integers(9000, 14000, int(breast.sum()), dtype=np.uint16)
    r = int(rng.integers(50, 300))
    cx, cy = int(rng.integers(r + 100, int(0.6 * cols) - r)), int(rng.integers(rows // 4 + r, 3 * rows // 4 - r))
    mass = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    img[mass] = rng.integers(20000, 26000, int(mass.sum()), dtype=np.uint16)
    paths = folder / f"img{k}.dcm", folder / f"mask{k}.dcm", folder / f"crop{k}.dcm"
    write_dicom(paths[0], img, 16)
    write_dicom(paths[1], (mass * 255).astype(np.uint8), 8)
    write_dicom(paths[2], img[cy - r:cy + r, cx - r:cx + r].copy(), 16)
    return paths


def build(root: Path, lesions: int, unique: int, rows: int, cols: int) -> tuple[list[Path], list[Path]]:
    """The fake download under root/download and the two description CSVs; returns (csvs, distinct files)."""
    store = root / "distinct"
    triples = [make_unique(store, k, rows, cols) for k in range(unique)]
    rows_out = {"train": [], "test": []}
    for i in range(lesions):
        img, mask, crop = triples[i % unique]
        split = "Training" if i % 5 else "Test"
        series = f"Mass-{split}_P_{i:05d}_LEFT_CC"
        img_dir = root / "download" / "CBIS-DDSM" / series / "07-20-2016-DDSM-NA-1" / "1.000000-full mammogram images-1"
        roi_dir = root / "download" / "CBIS-DDSM" / f"{series}_1" / "07-21-2016-DDSM-NA-2"
        img_dir.mkdir(parents=True)
        os.link(img, img_dir / "1-1.dcm")
        if i % 3 == 0:  # the trap: both in one series, names swapped
            (roi_dir / "1.000000-ROI mask images-3").mkdir(parents=True)
            os.link(crop, roi_dir / "1.000000-ROI mask images-3" / "1-1.dcm")
            os.link(mask, roi_dir / "1.000000-ROI mask images-3" / "1-2.dcm")
        else:
            (roi_dir / "1.000000-ROI mask images-3").mkdir(parents=True)
            (roi_dir / "2.000000-cropped images-4").mkdir(parents=True)
            os.link(mask, roi_dir / "1.000000-ROI mask images-3" / "1-1.dcm")
            os.link(crop, roi_dir / "2.000000-cropped images-4" / "1-1.dcm")
        uid = f"1.3.6.1.4.1.9590.100.1.2.{i}"
        rows_out["train" if split == "Training" else "test"].append({
            "patient_id": f"P_{i:05d}", "breast_density": 2, "left or right breast": "LEFT", "image view": "CC",
            "abnormality id": 1, "abnormality type": "mass", "mass shape": "OVAL", "mass margins": "CIRCUMSCRIBED",
            "assessment": 4, "pathology": "MALIGNANT" if i % 2 else "BENIGN", "subtlety": 3,
            "image file path": f"{series}/{uid}.1/{uid}.2/000000.dcm",
            "cropped image file path": f"{series}_1/{uid}.3/{uid}.4/000000.dcm\n",
            "ROI mask file path": f"{series}_1/{uid}.3/{uid}.5/000001.dcm\n"})
    csvs = []
    for split, rows_ in rows_out.items():
        path = root / f"mass_case_description_{split}_set.csv"
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows_[0]))
            w.writeheader()
            w.writerows(rows_)
        csvs.append(path)
    return csvs, [p for t in triples for p in t]


def evict(files: list[Path]) -> None:
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cold_read_rate(files: list[Path]) -> float:
    """MB/s reading the distinct files once, just evicted from the page cache."""
    evict(files)
    start, total = time.perf_counter(), 0
    for p in files:
        with p.open("rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    return total / 1e6 / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lesions", type=int, default=1700)
    ap.add_argument("--unique", type=int, default=200, help="distinct image/mask/crop triples written")
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--cols", type=int, default=3000)
    ap.add_argument("--workers", type=int, action="append", help="repeatable (default: 1 and all cores)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()
    workers = args.workers or sorted({1, os.cpu_count() or 1})

    from dpmammo.config import parse_config
    from dpmammo.data.extract import ExtractConfig, extract

    root = Path(tempfile.mkdtemp(prefix="extract-speed-", dir=args.dir))
    try:
        t = time.perf_counter()
        csvs, distinct = build(root, args.lesions, args.unique, args.rows, args.cols)
        gb = sum(p.stat().st_size for p in distinct) / 1e9
        print(f"built {args.lesions} series ({args.unique} distinct {args.cols}×{args.rows} 16-bit mammograms + "
              f"8-bit masks + crops, {gb:.1f} GB) in {time.perf_counter() - t:.0f} s")
        per_lesion_mb = gb * 1e3 / args.unique
        rate = cold_read_rate(distinct)
        print(f"cold read rate of the distinct files: {rate:.0f} MB/s → {args.lesions} distinct lesions "
              f"(~{per_lesion_mb * args.lesions / 1e3:.0f} GB) would add ~{per_lesion_mb * args.lesions / rate:.0f} s "
              "of reading at that rate where it cannot overlap decoding")
        times = {}
        for w in workers:
            evict(distinct)
            cfg = parse_config(ExtractConfig, {
                "source": {"kind": "cbis-ddsm", "csv": [str(c) for c in csvs], "dicom_root": str(root / "download")},
                "dataset": "cbis-ddsm", "split": {"mode": "source"}, "workers": w}, "benchmark")
            t = time.perf_counter()
            summary = extract(cfg, root / f"out-{w}", progress=False)
            times[w] = time.perf_counter() - t
            print(f"workers {w}: {summary['patches']} patches, {summary['skipped']} skipped, {times[w]:.1f} s "
                  f"({summary['patches'] / times[w]:.1f} lesions/s)")
            shutil.rmtree(root / f"out-{w}")
        base = times[min(times)]
        for w, s in times.items():
            print(f"  speed-up workers {w} vs {min(times)}: {base / s:.2f}×")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
