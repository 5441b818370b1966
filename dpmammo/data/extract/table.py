"""A generic annotation table → image jobs.

One row per lesion. Columns (exact names; paths relative to the table's folder):

| column | required | meaning |
|---|---|---|
| image | yes | the mammogram: DICOM (.dcm), PNG or TIFF |
| patient | yes | patient id (splits keep a patient's lesions together) |
| label | yes | 1 or malignant; 0 or benign |
| mask | one of | a mask image (nonzero = lesion; each connected component becomes a lesion) |
| x, y, width, height | one of | the lesion's box in image pixels, top-left origin |
| split | no | the source's own split (train / val / test), for `--split source` |

A row gives a mask or a box, not both. A malformed table is an error naming the line; a file
that is missing or unreadable skips its lesions (skipped.csv).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from dpmammo.data.extract.config import SPLITS, TableSource
from dpmammo.data.extract.jobs import Annotation, ImageJob, Skipped
from dpmammo.data.manifest import BENIGN, MALIGNANT
from dpmammo.errors import DpMammoError

LABELS = {"1": MALIGNANT, "malignant": MALIGNANT, "0": BENIGN, "benign": BENIGN}
BOX_COLUMNS = ("x", "y", "width", "height")
COLUMNS = ("image", "patient", "label", "mask", *BOX_COLUMNS, "split")


def _box(row: dict[str, str], where: str) -> tuple[int, int, int, int] | None:
    given = [row.get(c, "").strip() for c in BOX_COLUMNS]
    if not any(given):
        return None
    if not all(given):
        raise DpMammoError(f"{where}: a box needs all of x, y, width, height (got {dict(zip(BOX_COLUMNS, given))})")
    try:
        x, y, w, h = (int(float(v)) for v in given)
    except ValueError:
        raise DpMammoError(f"{where}: box values must be pixel numbers, got {given}") from None
    if w < 1 or h < 1:
        raise DpMammoError(f"{where}: box width and height must be ≥ 1, got {w}×{h}")
    return x, y, w, h


def plan_jobs(source: TableSource, need_source_split: bool) -> tuple[list[ImageJob], list[Skipped], dict]:
    table = Path(source.table).expanduser()
    if not table.is_file():
        raise DpMammoError(f"annotation table not found: {table}")
    base = table.parent
    by_image: dict[str, list[Annotation]] = defaultdict(list)
    skipped: list[Skipped] = []
    n_rows = 0
    with table.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        unknown = [c for c in header if c not in COLUMNS]
        if unknown:
            raise DpMammoError(f"{table}: unknown column(s) {', '.join(unknown)}; expected {', '.join(COLUMNS)}")
        missing = [c for c in ("image", "patient", "label") if c not in header]
        if missing:
            raise DpMammoError(f"{table}: missing column(s) {', '.join(missing)}")
        if "mask" not in header and not all(c in header for c in BOX_COLUMNS):
            raise DpMammoError(f"{table}: give a mask column or the box columns {', '.join(BOX_COLUMNS)}")
        if need_source_split and "split" not in header:
            raise DpMammoError(f"{table}: --split source needs a split column (train / val / test)")
        for line, raw in enumerate(reader, start=2):
            n_rows += 1
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{table.name} line {line}"
            if not row["image"] or not row["patient"]:
                raise DpMammoError(f"{where}: image and patient must not be empty")
            if row["label"].lower() not in LABELS:
                raise DpMammoError(f"{where}: label {row['label']!r} must be 1/malignant or 0/benign")
            split = row.get("split", "").lower() or None
            if split is not None and split not in SPLITS:
                raise DpMammoError(f"{where}: split {row['split']!r} must be one of {', '.join(SPLITS)}")
            if need_source_split and split is None:
                raise DpMammoError(f"{where}: empty split (needed by --split source)")
            box, mask = _box(row, where), row.get("mask", "")
            if (box is None) == (not mask):
                raise DpMammoError(f"{where}: give a mask or a box (x, y, width, height), exactly one")
            image = base / row["image"]
            if not image.is_file():
                skipped.append(Skipped(str(image), "image file not found", where))
                continue
            if mask and not (base / mask).is_file():
                skipped.append(Skipped(str(base / mask), "mask file not found", where))
                continue
            by_image[row["image"]].append(Annotation(
                origin=where, patient=row["patient"], label=LABELS[row["label"].lower()], source_split=split,
                mask_files=(str(base / mask),) if mask else (), box=box))
    if n_rows == 0:
        raise DpMammoError(f"{table}: no rows")
    jobs = [ImageJob(i, (str(base / key),), key, tuple(anns)) for i, (key, anns) in enumerate(sorted(by_image.items()))]
    return jobs, skipped, {"rows": n_rows}
