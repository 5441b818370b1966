"""Index patch folders into a manifest: one row per lesion patch with its label and patient.

Labels are decided here and only here: 1 = malignant (the positive class), 0 = benign.
The published layout names its class folders from the benign point of view
(`is_benign_true` = benign, `is_benign_false` = malignant); they are translated once, below.

Layouts understood (a folder may mix them):
- published: ``<dataset>/<split>/is_benign_true|is_benign_false/*.png``
- generic:   ``<dataset>/<split>/benign|malignant/*.png``
- synthetic: ``<dataset>/<split>/*_benign.png|*_malignant.png`` (label from the exact suffix)
- sampled:   a folder with a ``manifest.csv`` written by ``dpmammo gan sample``.
"""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from dpmammo.errors import DpMammoError
from dpmammo.files import atomic_path

MALIGNANT, BENIGN = 1, 0

# Class-folder names → label. Exact names only: no substring matching.
CLASS_FOLDERS = {
    "is_benign_false": MALIGNANT,
    "is_benign_true": BENIGN,
    "malignant": MALIGNANT,
    "benign": BENIGN,
}
SYNTHETIC_SUFFIX = {"malignant": MALIGNANT, "benign": BENIGN}
IMAGE_SUFFIXES = {".png"}

# patient<ID>_image<...>_mass<...>_is_benign_<0|1>.png
_PUBLISHED_NAME = re.compile(r"^patient(?P<patient>.+?)_image.+_is_benign_(?P<is_benign>[01])$")
_SYNTHETIC_NAME = re.compile(r"^.+_(?P<cls>benign|malignant)$")
SAMPLED_MANIFEST = "manifest.csv"
# label → the published class folder (the inverse of CLASS_FOLDERS for that layout)
PUBLISHED_FOLDER = {MALIGNANT: "is_benign_false", BENIGN: "is_benign_true"}
PROVENANCE_FILE = "provenance.json"  # beside a sampled manifest (see dpmammo.data.sets)


@dataclass(frozen=True)
class PatchRecord:
    path: str
    label: int  # 1 = malignant, 0 = benign
    patient: str  # "" where the file name carries no patient (synthetic patches)
    dataset: str
    split: str
    source: str  # "real" | "synthetic"

    @property
    def set_name(self) -> str:
        return f"{self.dataset}/{self.split}"


def published_name(patient: str, image: str, mass: str, label: int) -> str:
    """The published file name for a patch, which `index_folder` parses back to `patient`.

    Raises DpMammoError when `patient` would not read back unchanged (e.g. it holds "_image").
    """
    if label not in PUBLISHED_FOLDER:
        raise DpMammoError(f"label must be 1 (malignant) or 0 (benign), got {label!r}")
    stem = f"patient{patient}_image{image}_mass{mass}_is_benign_{1 if label == BENIGN else 0}"
    m = _PUBLISHED_NAME.match(stem)
    if not m or m["patient"] != patient:
        raise DpMammoError(f"patient id {patient!r} cannot be written in a published file name "
                           "(it must not contain '_image'); rename it in the annotations")
    return stem + ".png"


def _images_in(folder: Path) -> list[Path]:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
    dangling = [p for p in images if not p.is_file()]
    if dangling:  # leaving them out would train and test on a silently smaller set
        more = f" and {len(dangling) - 1} more" if len(dangling) > 1 else ""
        raise DpMammoError(f"{dangling[0]}{more}: a link to a missing file (or not a regular file); restore what it "
                           "points to or remove the link")
    return images


def _published_records(folder: Path, label: int, dataset: str, split: str) -> list[PatchRecord]:
    records = []
    for p in _images_in(folder):
        m = _PUBLISHED_NAME.match(p.stem)
        patient = ""
        if m:
            patient = m["patient"]
            named_label = BENIGN if m["is_benign"] == "1" else MALIGNANT
            if named_label != label:
                raise DpMammoError(
                    f"label conflict: {p} is in class folder {folder.name!r} but its name says "
                    f"is_benign_{m['is_benign']}; fix the file or its folder"
                )
        records.append(PatchRecord(str(p), label, patient, dataset, split, "real"))
    return records


def _synthetic_records(folder: Path, dataset: str, split: str) -> list[PatchRecord]:
    records = []
    for p in _images_in(folder):
        m = _SYNTHETIC_NAME.match(p.stem)
        if not m:
            raise DpMammoError(
                f"cannot tell the class of {p}: synthetic patches must end in _benign.png or "
                "_malignant.png (or live in a folder with a manifest.csv)"
            )
        records.append(PatchRecord(str(p), SYNTHETIC_SUFFIX[m["cls"]], "", dataset, split, "synthetic"))
    return records


def _sampled_records(folder: Path) -> list[PatchRecord]:
    rows = read_manifest(folder / SAMPLED_MANIFEST)
    # Paths in a sampled manifest are relative to its folder, so the folder can be moved.
    return [
        PatchRecord(str((folder / r.path).resolve()) if not Path(r.path).is_absolute() else r.path,
                    r.label, r.patient, r.dataset, r.split, r.source)
        for r in rows
    ]


def index_folder(root: str | Path) -> list[PatchRecord]:
    """Walk `root` and return every patch in a known layout, sorted by path.

    Raises DpMammoError for: a missing root, images in a folder of unknown layout, a label
    conflict between folder and file name, an empty class in a split, or a patient present in
    two splits of the same data set.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DpMammoError(f"data folder not found: {root} (set DPMAMMO_DATA or run `dpmammo data fetch`)")
    records: list[PatchRecord] = []
    sampled_roots: list[Path] = []
    for folder in sorted([root, *(p for p in root.rglob("*") if p.is_dir())]):
        if any(folder.is_relative_to(s) for s in sampled_roots):
            continue
        if (folder / SAMPLED_MANIFEST).is_file():
            sampled_roots.append(folder)
            records += _sampled_records(folder)
            continue
        images = _images_in(folder)
        if not images:
            continue
        if folder.name in CLASS_FOLDERS:
            split_dir = folder.parent
            dataset = split_dir.parent.name
            records += _published_records(folder, CLASS_FOLDERS[folder.name], dataset, split_dir.name)
        elif all(_SYNTHETIC_NAME.match(p.stem) for p in images):
            dataset = folder.parent.name if folder != root else "synthetic"
            records += _synthetic_records(folder, dataset, folder.name)
        else:
            raise DpMammoError(
                f"unknown layout: {folder} holds images but is not a class folder "
                f"({', '.join(CLASS_FOLDERS)}) nor a synthetic folder (*_benign.png / *_malignant.png)"
            )
    if not records:
        raise DpMammoError(f"no patches found under {root}: expected <dataset>/<split>/is_benign_true|is_benign_false/*.png")
    check_classes(records)
    check_patient_overlap(records)
    return sorted(records, key=lambda r: r.path)


def skipped_files(root: str | Path) -> list[Path]:
    """Files under `root` that `index_folder` leaves out (not .png, and not dpmammo's own
    manifest.csv / provenance.json of a sampled folder), sorted; so a user sees a .jpg set aside."""
    root = Path(root).expanduser()
    own = {SAMPLED_MANIFEST, PROVENANCE_FILE}
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES
                  and not (p.name in own and (p.parent / SAMPLED_MANIFEST).is_file()))


def check_classes(records: list[PatchRecord]) -> None:
    """Every split must hold both classes: an empty class makes AUROC undefined."""
    by_set: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        by_set[r.set_name][r.label] += 1
    for name, counts in sorted(by_set.items()):
        for label, cls in ((MALIGNANT, "malignant"), (BENIGN, "benign")):
            if counts[label] == 0:
                raise DpMammoError(f"empty class: {name} has no {cls} patches")


def check_patient_overlap(records: list[PatchRecord]) -> None:
    """A patient in two splits of one data set leaks test information into training."""
    splits: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in records:
        if r.patient:
            splits[(r.dataset, r.patient)].add(r.split)
    for (dataset, patient), seen in sorted(splits.items()):
        if len(seen) > 1:
            a, b = sorted(seen)[:2]
            raise DpMammoError(
                f"patient {patient!r} appears in two splits of {dataset}: {a} and {b}; "
                "splits must be patient-disjoint"
            )


def select(records: list[PatchRecord], set_name: str) -> list[PatchRecord]:
    """The records of one set, named `<dataset>/<split>` (e.g. `cbis-ddsm/train`)."""
    chosen = [r for r in records if r.set_name == set_name]
    if not chosen:
        known = sorted({r.set_name for r in records})
        raise DpMammoError(f"unknown data set {set_name!r}; this data folder has: {', '.join(known)}")
    return chosen


def summarize(records: list[PatchRecord]) -> list[dict]:
    """Counts per set: patches, malignant, benign, patients."""
    rows = []
    by_set: dict[str, list[PatchRecord]] = defaultdict(list)
    for r in records:
        by_set[r.set_name].append(r)
    for name, rs in sorted(by_set.items()):
        rows.append({
            "set": name,
            "patches": len(rs),
            "malignant": sum(r.label == MALIGNANT for r in rs),
            "benign": sum(r.label == BENIGN for r in rs),
            "patients": len({r.patient for r in rs if r.patient}),
            "source": rs[0].source,
        })
    return rows


_FIELDS = [f.name for f in fields(PatchRecord)]


def write_manifest(records: list[PatchRecord], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_FIELDS)
        w.writeheader()
        for r in records:
            w.writerow(asdict(r))


def read_manifest(path: str | Path) -> list[PatchRecord]:
    path = Path(path)
    if not path.is_file():
        raise DpMammoError(f"manifest not found: {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != _FIELDS:
            raise DpMammoError(f"{path}: expected columns {','.join(_FIELDS)}, got {reader.fieldnames}")
        out = []
        for i, row in enumerate(reader, start=2):
            if row["label"] not in ("0", "1"):
                raise DpMammoError(f"{path} line {i}: label must be 1 (malignant) or 0 (benign), got {row['label']!r}")
            out.append(PatchRecord(row["path"], int(row["label"]), row["patient"], row["dataset"],
                                   row["split"], row["source"]))
    return out
