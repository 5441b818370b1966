"""Run an extraction: plan jobs, cut patches in a process pool, split by patient, publish OUT.

OUT (written whole into a temporary folder beside it, moved into place at the end)::

    OUT/<dataset>/<split>/is_benign_true|is_benign_false/patient<dataset>__<id>_image<h>_mass<k>_is_benign_<0|1>.png
    OUT/patches.csv    the manifest (dpmammo.data.manifest format; paths relative to OUT)
    OUT/lesions.csv    per patch: source image, mask, annotation row, lesion box, crop box
    OUT/skipped.csv    per file or lesion left out: file, reason, annotation row
    OUT/extract.json   the resolved config, counts, timings and library versions

The manifest is not named manifest.csv on purpose: that name marks a `gan sample` folder, and
`dpmammo data index OUT` must read OUT as the published layout.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

from dpmammo import __version__
from dpmammo.data.extract import cbis_ddsm, table
from dpmammo.data.extract.config import CbisDdsmSource, ExtractConfig
from dpmammo.data.extract.jobs import ImageJob, JobResult, Lesion, Skipped, process_image
from dpmammo.data.extract.splits import LesionKey, assign_splits, check_both_classes
from dpmammo.data.manifest import PUBLISHED_FOLDER, index_folder, published_name, summarize, write_manifest
from dpmammo.errors import DpMammoError
from dpmammo.files import check_out, check_replaceable, exclusive, staged_folder, user_os_errors

CONFIG_FILE = "extract.json"
MANIFEST_FILE = "patches.csv"
LESIONS_FILE = "lesions.csv"
SKIPPED_FILE = "skipped.csv"
_STAGING = ".staging"


def prepare_out(out: Path, force: bool) -> None:
    """Refuse an existing non-empty OUT unless forced and written by this command (it holds
    extract.json); it is replaced only at the very end."""
    check_replaceable(out, force, marker=CONFIG_FILE, command="dpmammo data extract")


def source_inputs(cfg: ExtractConfig) -> list[tuple[str, Path]]:
    if isinstance(cfg.source, CbisDdsmSource):
        return [("--dicom-root", cfg.source.dicom_root), *(("the --csv table", c) for c in cfg.source.csv)]
    return [("the --table", cfg.source.table)]


def job_inputs(jobs: list[ImageJob]) -> Iterator[tuple[str, Path]]:
    """Every image and mask file the jobs read."""
    for job in jobs:
        for f in job.image_files:
            yield "the image", Path(f)
        for a in job.annotations:
            for f in a.mask_files:
                yield "the mask", Path(f)


def plan(cfg: ExtractConfig) -> tuple[list[ImageJob], list[Skipped], dict]:
    need_source_split = cfg.split.mode == "source"
    if isinstance(cfg.source, CbisDdsmSource):
        return cbis_ddsm.plan_jobs(cfg.source, need_source_split)
    return table.plan_jobs(cfg.source, need_source_split)


def _run_jobs(jobs: list[ImageJob], cfg: ExtractConfig, staging: Path) -> Iterator[JobResult]:
    args = (cfg.recipe, str(staging), cfg.split.seed)
    workers = min(cfg.workers, len(jobs))
    if workers <= 1:
        for job in jobs:
            yield process_image(job, *args)
        return
    # spawn: workers start clean, whatever threads (torch, BLAS) the parent has running
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(process_image, job, *args) for job in jobs]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


class _Progress:
    """A rich bar on a terminal; otherwise a plain line every tenth of the work (or none)."""

    def __init__(self, total: int, enabled: bool, write: Callable[[str], None] | None = None):
        self.total, self.done, self.lesions, self.skipped = total, 0, 0, 0
        self.bar = None
        self.write = write or (lambda s: print(s, file=sys.stderr, flush=True))
        self.enabled = enabled
        self.next_line = 0
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("extract"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
                                TextColumn("{task.fields[note]}"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False)
            self.task = self.bar.add_task("extract", total=total, note="")
            self.bar.start()

    def update(self, result: JobResult) -> None:
        self.done += 1
        self.lesions += len(result.lesions)
        self.skipped += len(result.skipped)
        if not self.enabled:
            return
        note = f"{self.lesions} lesions, {self.skipped} skipped"
        if self.bar is not None:
            self.bar.update(self.task, advance=1, note=note)
        elif self.done * 10 >= self.next_line * self.total or self.done == self.total:
            self.write(f"extract: {self.done}/{self.total} images ({100 * self.done // self.total}%), {note}")
            self.next_line = self.done * 10 // self.total + 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _image_id(key: str) -> str:
    """A short stable id of the source image for patch names (its source path can be long)."""
    return hashlib.blake2s(key.encode(), digest_size=6).hexdigest()


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def extract(cfg: ExtractConfig, out: str | Path, *, force: bool = False, progress: bool = True,
            write: Callable[[str], None] | None = None) -> dict:
    """Cut every annotated lesion into a patch and write OUT in the published layout.

    Returns the summary also written to OUT/extract.json. Raises DpMammoError for bad input
    (tables, config, OUT) and when no lesion at all could be cut; single unreadable files or
    lesions are listed in OUT/skipped.csv instead.

    Example:
        >>> cfg = ExtractConfig(source={"kind": "csv", "table": "ann.csv"}, dataset="hospital")  # doctest: +SKIP
        >>> extract(cfg, "data/hospital")  # doctest: +SKIP
    """
    start = time.perf_counter()
    given = out
    out = check_out(out, source_inputs(cfg))
    prepare_out(out, force)
    jobs, skipped, counts = plan(cfg)
    if not jobs:
        reasons = "; ".join(f"{s.file}: {s.reason}" for s in skipped[:3])
        raise DpMammoError(f"nothing to extract: no annotation points at an existing image ({reasons or 'no rows'})")
    check_out(given, job_inputs(jobs))
    with user_os_errors(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(out, "extracting into"), staged_folder(out) as tmp:
        prepare_out(out, force)  # again, now that no other process can be writing it
        staging = tmp / _STAGING
        staging.mkdir()
        results: list[JobResult] = []
        bar = _Progress(len(jobs), progress, write)
        try:
            for result in _run_jobs(jobs, cfg, staging):
                results.append(result)
                bar.update(result)
        finally:
            bar.close()
        results.sort(key=lambda r: r.index)
        lesions = [les for r in results for les in r.lesions]
        skipped += [s for r in results for s in r.skipped]
        if not lesions:
            reasons = "; ".join(f"{Path(s.file).name}: {s.reason}" for s in skipped[:3])
            raise DpMammoError(f"nothing could be read: 0 of {sum(len(j.annotations) for j in jobs)} annotations gave "
                               f"a patch ({reasons})")
        summary = _write_out(tmp, staging, lesions, skipped, cfg)
        summary.update(counts)
        summary.update(images=len(jobs), seconds=round(time.perf_counter() - start, 2))
        (tmp / CONFIG_FILE).write_text(json.dumps(summary, indent=2) + "\n")  # last: it marks the folder ours
    return summary


def _write_out(tmp: Path, staging: Path, lesions: list[Lesion], skipped: list[Skipped], cfg: ExtractConfig) -> dict:
    safe: dict[str, str] = {}
    for les in lesions:
        other = safe.setdefault(_safe_id(les.patient), les.patient)
        if other != les.patient:
            raise DpMammoError(f"patient ids {other!r} and {les.patient!r} read the same in a file name "
                               f"({_safe_id(les.patient)!r}); make them differ in letters, digits, '-', '.' or '_'")
    keys = [LesionKey(les.patient, les.label, les.source_split) for les in lesions]
    splits, _ = assign_splits(keys, cfg.split)
    check_both_classes(keys, splits)
    dataset = cfg.dataset
    lesion_rows = []
    for k, (les, split) in enumerate(zip(lesions, splits)):
        if split is None:
            skipped.append(Skipped(les.image, f"patient {les.patient} is also in a later source split; "
                                              f"training lesion left out", les.origin))
            (staging / les.staged).unlink()
            continue
        name = published_name(f"{dataset}__{_safe_id(les.patient)}", _image_id(les.image_key), str(k), les.label)
        rel = Path(dataset) / split / PUBLISHED_FOLDER[les.label] / name
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / les.staged).rename(tmp / rel)
        x, y, w, h = les.box
        cx, cy, side = les.crop
        lesion_rows.append([rel.as_posix(), les.label, les.patient, split, les.source_split or "", les.origin,
                            les.image, les.mask, int(les.mask_resized), les.component, x, y, w, h,
                            les.lesion_pixels, cx, cy, side])
    staging.rmdir()
    # Read the result back exactly as `dpmammo data index` will: the manifest is its output.
    records = index_folder(tmp)
    records = [replace(r, path=Path(r.path).relative_to(tmp).as_posix()) for r in records]
    write_manifest(records, tmp / MANIFEST_FILE)
    _write_csv(tmp / LESIONS_FILE,
               ["path", "label", "patient", "split", "source_split", "annotation", "image", "mask", "mask_resized",
                "component", "x", "y", "width", "height", "lesion_pixels", "crop_x", "crop_y", "crop_side"],
               lesion_rows)
    _write_csv(tmp / SKIPPED_FILE, ["file", "reason", "annotation"], [[s.file, s.reason, s.origin] for s in skipped])
    import numpy
    import PIL
    import pydicom
    import scipy

    return {
        "config": cfg.model_dump(mode="json"),
        "sets": summarize(records),
        "patches": len(records),
        "skipped": len(skipped),
        "versions": {"dpmammo": __version__, "pydicom": pydicom.__version__, "numpy": numpy.__version__,
                     "scipy": scipy.__version__, "pillow": PIL.__version__},
    }


def _safe_id(patient: str) -> str:
    """A patient id as it can stand in a file name (path separators and spaces replaced)."""
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in patient)
