"""CBIS-DDSM from TCIA: the case description CSVs + the DICOM tree → image jobs.

The collection's known traps, and what is done about each:
- CSV paths do not match the files on disk (`…/1.3.6…/000000.dcm` in the CSV, `…/<date dir>/
  <series dir>/1-1.dcm` on disk, with or without a `CBIS-DDSM/` folder above). Only the first
  path component (the series folder, e.g. `Mass-Training_P_00001_LEFT_CC_1`) is trusted; the
  files are whatever DICOMs that folder holds.
- ROI-mask and cropped-image files are swapped or misnamed. They share a folder; the mask is
  told apart by content in the worker (binary and about the mammogram's size; the crop is small
  and grey-level), never by name. See dpmammo.data.extract.jobs.pick_mask.
- Masks whose size differs from the mammogram: resized within recipe.mask_size_tolerance.
- Path cells with trailing newlines or spaces: stripped.

Pathology: MALIGNANT → 1; BENIGN and BENIGN_WITHOUT_CALLBACK → 0. Any other value is an error
naming the CSV line. The source split is read from the series folder's prefix
(`Mass-Training_` → train, `Mass-Test_` → test).
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path, PurePosixPath

from dpmammo.data.extract.config import CbisDdsmSource
from dpmammo.data.extract.jobs import Annotation, ImageJob, Skipped
from dpmammo.data.manifest import BENIGN, MALIGNANT
from dpmammo.errors import DpMammoError

PATHOLOGY = {"MALIGNANT": MALIGNANT, "BENIGN": BENIGN, "BENIGN_WITHOUT_CALLBACK": BENIGN}
ABNORMALITY_TYPES = {"mass": "mass", "calcification": "calcification"}
REQUIRED = ("patient_id", "pathology", "abnormality_type", "image_file_path", "roi_mask_file_path")
_SERIES_PREFIX = re.compile(r"^(?:Mass|Calc)-(?P<split>Training|Test)_")
SOURCE_SPLIT = {"Training": "train", "Test": "test"}
COLLECTION_FOLDER = "CBIS-DDSM"


def column_key(name: str) -> str:
    """`breast_density`, `breast density` and `Breast Density` are one column (the CSVs differ)."""
    return re.sub(r"[\s_]+", "_", name.strip().lower())


def series_folder(cell: str, where: str) -> str:
    """The first path component of a CSV path cell: the series folder name."""
    parts = PurePosixPath(cell.strip().replace("\\", "/")).parts
    if not parts or parts[0] in ("/", "..", "."):
        raise DpMammoError(f"{where}: cannot read a series folder from the path {cell.strip()!r}")
    return parts[0]


def read_rows(path: Path, types: set[str]) -> tuple[list[dict[str, str]], int]:
    """The rows of one description CSV with normalised keys (+ `origin`), and how many were of other types."""
    if not path.is_file():
        raise DpMammoError(f"CBIS-DDSM description CSV not found: {path}")
    rows, other_types = [], 0
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        keys = {column_key(c): c for c in reader.fieldnames or []}
        missing = [c for c in REQUIRED if c not in keys]
        if missing:
            raise DpMammoError(f"{path}: not a CBIS-DDSM case description CSV; missing column(s) "
                               f"{', '.join(missing)} (has: {', '.join(reader.fieldnames or [])})")
        for line, raw in enumerate(reader, start=2):
            row = {k: (raw[c] or "").strip() for k, c in keys.items()}
            where = f"{path.name} line {line}"
            kind = row["abnormality_type"].lower()
            if kind not in ABNORMALITY_TYPES:
                raise DpMammoError(f"{where}: abnormality type {row['abnormality_type']!r} is not mass or calcification")
            if kind not in types:
                other_types += 1
                continue
            if row["pathology"] not in PATHOLOGY:
                raise DpMammoError(f"{where}: pathology {row['pathology']!r} is not one of {', '.join(PATHOLOGY)}")
            if not row["patient_id"]:
                raise DpMammoError(f"{where}: empty patient_id")
            row["origin"] = where
            rows.append(row)
    return rows, other_types


class SeriesIndex:
    """Series folder name → its DICOM files, under the root or a CBIS-DDSM folder in it."""

    def __init__(self, root: Path):
        root = root.expanduser()
        if not root.is_dir():
            raise DpMammoError(f"--dicom-root not found: {root}")
        self.bases = [root] + ([root / COLLECTION_FOLDER] if (root / COLLECTION_FOLDER).is_dir() else [])
        self._files: dict[str, tuple[str, ...]] = {}

    def files(self, name: str) -> tuple[str, ...] | None:
        """The .dcm files under the series folder (sorted), () if it has none, None if it is absent."""
        if name not in self._files:
            folder = next((b / name for b in self.bases if (b / name).is_dir()), None)
            self._files[name] = None if folder is None else tuple(
                str(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() == ".dcm")
        return self._files[name]

    def where(self, name: str) -> str:
        return str(self.bases[-1] / name)


def plan_jobs(source: CbisDdsmSource, need_source_split: bool) -> tuple[list[ImageJob], list[Skipped], dict]:
    """One job per mammogram (rows of one image share it); rows whose folders are absent are skipped."""
    index = SeriesIndex(source.dicom_root)
    types = set(source.abnormality_types)
    by_image: dict[str, list[Annotation]] = defaultdict(list)
    skipped: list[Skipped] = []
    counts = {"rows": 0, "rows_of_other_types": 0}
    for csv_path in source.csv:
        rows, other = read_rows(Path(csv_path).expanduser(), types)
        counts["rows"] += len(rows)
        counts["rows_of_other_types"] += other
        for row in rows:
            where = row["origin"]
            image_series = series_folder(row["image_file_path"], where)
            m = _SERIES_PREFIX.match(image_series)
            if need_source_split and not m:
                raise DpMammoError(f"{where}: series folder {image_series!r} does not say Training or Test; "
                                   "use --split with fractions instead of source")
            roi_series = {series_folder(row["roi_mask_file_path"], where)}
            if row.get("cropped_image_file_path"):
                roi_series.add(series_folder(row["cropped_image_file_path"], where))
            roi_files: list[str] = []
            for name in sorted(roi_series):
                roi_files += index.files(name) or ()
            if index.files(image_series) is None:
                skipped.append(Skipped(index.where(image_series), "series folder not found (not downloaded?)", where))
                continue
            if not roi_files:
                skipped.append(Skipped(index.where(sorted(roi_series)[0]), "no ROI mask DICOM found in the series folder", where))
                continue
            by_image[image_series].append(Annotation(
                origin=where, patient=row["patient_id"], label=PATHOLOGY[row["pathology"]],
                source_split=SOURCE_SPLIT[m["split"]] if m else None,
                mask_files=tuple(roi_files), pick_mask_by_content=True))
    jobs = []
    for name in sorted(by_image):
        files = index.files(name)
        if not files:
            skipped += [Skipped(index.where(name), "no DICOM file in the series folder", a.origin) for a in by_image[name]]
            continue
        jobs.append(ImageJob(len(jobs), files, name, tuple(by_image[name])))
    return jobs, skipped, counts
