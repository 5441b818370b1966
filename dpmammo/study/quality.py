"""Quality of a study's synthetic sets beside real data: quality.csv, quality.md and sample grids.

Scored at one resolution (the generator's image size, else the study model's input size), each
set against the study's private training set:

- classifier-feature Fréchet distance (dpmammo.gan.score: the FID recipe on a mammography
  classifier's features);
- class fidelity: AUROC of the intended labels under that classifier;
- FRD (Fréchet Radiomics Distance) when the `frd` extra is installed, else "not measured".

The sets: every generator set of the study (or its fixed synthetic set), the shipped
`synthetic/c-dcgan` when the data root has it, and the validation set as the real-vs-real
reference. Every set is subsampled to the same number of patches (the smallest set, at most
`quality.max_patches`), since a Fréchet distance shrinks with the sample size; the reference to
at most `quality.max_patches` (FRD extracts radiomics features patch by patch, anew for each
set, the slowest part of the step). The judge is a non-private
cnn-small trained once per study on the training set (selected on validation) under
quality/classifier; it serves scoring only and is never a result of the study.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict
from rich.console import Console

from dpmammo.data.manifest import BENIGN, MALIGNANT, PatchRecord
from dpmammo.data.sets import load_set, synthetic_provenance
from dpmammo.files import atomic_path, write_text_atomic
from dpmammo.privacy.ledger import ChainTotal, compose, short, synthetic_chain
from dpmammo.study.config import StudyConfig
from dpmammo.study.outcome import Outcome, failed
from dpmammo.study.recipes import Plan

QUALITY_CSV, QUALITY_MD, QUALITY_DIR = "quality.csv", "quality.md", "quality"
SHIPPED_SET = "synthetic/c-dcgan"  # the published synthetic patches (c-DCGAN, trained without DP)
GRID_PER_CLASS = 8
SEED = 0  # subsampling and grids; not a DP seed (nothing here is private-noise)
PRIVACY_NOTE = ("These scores are computed from the private training and validation sets without DP: they are "
                "diagnostics for the study's authors, covered by no ε of the study; do not release them with "
                "the models.")


class QualityRow(BaseModel):
    """One row of quality.csv: a set's scores (or why it has none)."""

    model_config = ConfigDict(extra="forbid")

    set: str  # a generator set (its folder in the study), a set name, or a folder
    kind: Literal["generator", "study set", "shipped", "real"]
    guarantee: str  # the chain total of the set's origin, e.g. "ε=2.98/patient", "no guarantee"
    status: Literal["ok", "failed", "skipped"]
    image_size: int
    ref: str
    n: Optional[int] = None
    n_ref: Optional[int] = None
    classifier_fd: Optional[float] = None
    class_fidelity: Optional[float] = None
    frd: Optional[float] = None
    frd_note: str = ""
    grid: str = ""  # the sample grid PNG, relative to the study directory; "" for sets whose pixels are private
    error: str = ""


COLUMNS = tuple(QualityRow.model_fields)


@dataclass(frozen=True)
class Candidate:
    """A set to score: `source` is what load_set reads (a set name or a folder); `blocked` says
    why it cannot be scored (its generator run failed)."""

    label: str
    kind: str
    source: str
    blocked: str = ""


def quality_image_size(cfg: StudyConfig) -> int:
    """The one resolution of every score: the generator's image size (at least the judge's 32 px),
    else the study model's input size."""
    if cfg.generator is not None:
        return max(32, cfg.generator.config_at(math.inf, None).model.image_size)
    return cfg.model.input_size


def candidates(cfg: StudyConfig, plan: Plan, study_dir: Path, outcomes: dict[str, Outcome]) -> list[Candidate]:
    out = []
    if cfg.generator is None:
        out.append(Candidate(cfg.synthetic, "study set", cfg.synthetic))
    for run_id, spec in plan.generators.items():
        o = outcomes.get(run_id)
        ok = o is not None and o.status in ("done", "cached")
        out.append(Candidate(spec.samples_id, "generator", str(study_dir / spec.samples_id),
                             blocked="" if ok else f"generator run {run_id} {o.status if o else 'not run'}"))
    if cfg.synthetic != SHIPPED_SET and (Path(cfg.data_root) / SHIPPED_SET).is_dir():
        out.append(Candidate(SHIPPED_SET, "shipped", SHIPPED_SET))
    out.append(Candidate(cfg.val_set, "real", cfg.val_set))
    return out


def set_chain(records: list[PatchRecord]) -> Optional[ChainTotal]:
    """What a set's origin guarantees: the composed chain of its synthetic folders' provenance
    (a folder without one: no guarantee); None for real patches, the private data itself."""
    if any(r.source == "real" for r in records):
        return None
    return compose(synthetic_chain(synthetic_provenance(records)))


def set_guarantee(records: list[PatchRecord]) -> str:
    chain = set_chain(records)
    return "private data" if chain is None else short(chain)


def pixels_may_be_shown(records: list[PatchRecord]) -> bool:
    """A sample grid is drawn only of sets whose pixels carry a guarantee (DP, or no private data):
    never of private patches, nor of samples of a generator that saw private data without DP."""
    chain = set_chain(records)
    return chain is not None and chain.guarantee in ("dp", "public")


def run_quality(cfg: StudyConfig, plan: Plan, study_dir: Path, outcomes: dict[str, Outcome], *,
                console: Optional[Console] = None) -> list[QualityRow]:
    """Score every candidate set; write quality.csv, quality.md and the grids; return the rows.
    A set that cannot be scored is a failed or skipped row; the others go on."""
    from dpmammo.train.saved import load_run_model
    from dpmammo.gan.score import subsample, train_score_classifier

    settings = cfg.quality_settings
    size, root = quality_image_size(cfg), Path(cfg.data_root)
    base = {"image_size": size, "ref": cfg.train_set}
    cands = candidates(cfg, plan, study_dir, outcomes)
    sets, rows = load_candidates(cands, root, base)
    n = min([settings.max_patches, *(len(r) for r in sets.values())])
    try:
        judge = train_score_classifier(cfg.train_set, cfg.val_set, study_dir / QUALITY_DIR / "classifier",
                                       root=root, input_size=size)
        _, model = load_run_model(judge)
        ref = subsample(load_set(root, cfg.train_set), settings.max_patches, SEED)
    except Exception as e:  # noqa: BLE001 — without a judge no set has scores; say so in every row
        rows |= {c.label: _failed_row(c, e, base) for c in cands if c.label in sets}
        sets = {}
    for c in cands:
        if c.label in sets:
            if console is not None:
                console.print(f"quality: scoring {c.label}")
            rows[c.label] = score_set(c, subsample(sets[c.label], n, SEED), ref, model, study_dir, base,
                                      frd=settings.frd)
    ordered = [rows[c.label] for c in cands]
    write_quality(study_dir, ordered, n)
    return ordered


def load_candidates(cands: list[Candidate], root: Path,
                    base: dict) -> tuple[dict[str, list[PatchRecord]], dict[str, QualityRow]]:
    """The records of every candidate that can be scored, and a row for each that cannot."""
    sets: dict[str, list[PatchRecord]] = {}
    rows: dict[str, QualityRow] = {}
    for c in cands:
        if c.blocked:
            rows[c.label] = QualityRow(set=c.label, kind=c.kind, guarantee="", status="skipped", error=c.blocked,
                                       **base)
            continue
        try:
            sets[c.label] = load_set(root, c.source)
        except Exception as e:  # noqa: BLE001 — one unreadable set must not hide the others' scores
            rows[c.label] = _failed_row(c, e, base)
    return sets, rows


def score_set(c: Candidate, records: list[PatchRecord], ref: list[PatchRecord], model, study_dir: Path,
              base: dict, *, frd: bool) -> QualityRow:
    from dpmammo.gan.score import score_records

    try:
        s = score_records(records, ref, model, frd=frd, frd_size=base["image_size"])
        grid = ""
        if pixels_may_be_shown(records):
            grid = (Path(QUALITY_DIR) / "grids" / f"{c.label.replace('/', '_')}.png").as_posix()
            write_grid(records, base["image_size"], study_dir / grid)
        return QualityRow(set=c.label, kind=c.kind, guarantee=set_guarantee(records), status="ok", n=len(records),
                          n_ref=len(ref), classifier_fd=s["classifier_fd"]["value"],
                          class_fidelity=s["class_fidelity"]["auroc"], frd=s["frd"]["value"],
                          frd_note=s["frd"].get("note", ""), grid=grid, **base)
    except Exception as e:  # noqa: BLE001
        return _failed_row(c, e, base)


def _failed_row(c: Candidate, e: Exception, base: dict) -> QualityRow:
    return QualityRow(set=c.label, kind=c.kind, guarantee="", status="failed",
                      error=failed(c.label, e, 0.0).error, **base)


def write_grid(records: list[PatchRecord], size: int, path: Path, per_class: int = GRID_PER_CLASS) -> Path:
    """A PNG of up to `per_class` benign patches (top row) and malignant ones (bottom row)."""
    from PIL import Image

    from dpmammo.data.images import load_images

    pad = 2
    canvas = np.full((2 * size + 3 * pad, per_class * size + (per_class + 1) * pad), 255, dtype=np.uint8)
    for row, label in enumerate((BENIGN, MALIGNANT)):
        chosen = [r for r in records if r.label == label][:per_class]
        if not chosen:
            continue
        images = load_images(chosen, size)[:, 0].numpy()
        for col, img in enumerate(images):
            y, x = pad + row * (size + pad), pad + col * (size + pad)
            canvas[y:y + size, x:x + size] = img
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(canvas, mode="L").save(tmp, format="PNG")
    return path


def write_quality(study_dir: Path, rows: list[QualityRow], n: int) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if v is None else v for k, v in r.model_dump().items()})
    write_text_atomic(study_dir / QUALITY_CSV, buf.getvalue())
    write_text_atomic(study_dir / QUALITY_MD, markdown(rows, n))


def _num(v: Optional[float], spec: str) -> str:
    return "" if v is None else f"{v:{spec}}"


def markdown(rows: list[QualityRow], n: int) -> str:
    size, ref = (rows[0].image_size, rows[0].ref) if rows else ("", "")
    lines = ["# Quality of the synthetic sets", "",
             f"Each set ({n} patches, seeded subsample) against {ref}, at {size} px. Fréchet distances: lower is "
             "closer to the real data; class fidelity: AUROC of the intended labels under a non-private classifier "
             "trained on the real training set (the real row: the validation set's own labels, on which that "
             "classifier was selected). Guarantee: the privacy of the set's origin (its generator's chain).", "",
             PRIVACY_NOTE, "",
             "| set | kind | guarantee | n | classifier-feature FD | class fidelity (AUROC) | FRD |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.set} | {r.kind} | {r.guarantee} | {r.status}: {r.error} | | | |")
            continue
        frd = _num(r.frd, ".2f") if r.frd is not None else (r.frd_note.split(":")[0] or "not measured")
        lines.append(f"| {r.set} | {r.kind} | {r.guarantee} | {r.n} | {_num(r.classifier_fd, '.3f')} | "
                     f"{_num(r.class_fidelity, '.3f')} | {frd} |")
    return "\n".join(lines) + "\n"


def read_quality(study_dir: str | Path) -> Optional[list[QualityRow]]:
    """quality.csv back as typed rows; None when the study scored no quality."""
    path = Path(study_dir) / QUALITY_CSV
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return [QualityRow.model_validate({k: (None if v == "" and k in _OPTIONAL else v) for k, v in r.items()})
                for r in csv.DictReader(f)]


_OPTIONAL = {k for k, f in QualityRow.model_fields.items() if f.default is None}
