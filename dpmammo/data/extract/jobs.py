"""The unit of parallel work: one mammogram and its annotations → staged patches + skip notes.

A job decodes its image once, however many lesions it has. It runs in a worker process, writes
each patch as a PNG into the staging folder and returns only small records; the parent names the
files and moves them into their split once the split is known. A file or lesion that cannot be
used becomes a `Skipped` record (file, reason); anything else is a bug and propagates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpmammo.data.extract.config import PatchRecipe
from dpmammo.data.extract.lesions import Box, Component, LesionError, check_box, components, cut_patch, square_crop
from dpmammo.data.extract.pixels import DisplayImage, UnreadableFile, image_shape, is_binary, read_image, read_mask

# A file with less than this share of the mammogram's area is a cropped lesion image, not a mask:
# its pixels are not decoded when a mask is picked by content.
_MIN_MASK_AREA_SHARE = 0.25


@dataclass(frozen=True)
class Annotation:
    """One annotated lesion region (a CSV row): a mask (maybe among candidates) or a box."""

    origin: str  # "<csv file> line <n>", for skipped.csv and lesions.csv
    patient: str
    label: int  # 1 = malignant, 0 = benign
    source_split: str | None  # the source's own split ("train" / "val" / "test"), if it has one
    mask_files: tuple[str, ...] = ()
    pick_mask_by_content: bool = False  # CBIS-DDSM: mask and crop share a folder, names unreliable
    box: Box | None = None


@dataclass(frozen=True)
class ImageJob:
    index: int
    image_files: tuple[str, ...]  # candidates; exactly one is the mammogram
    image_key: str  # stable name of the image in the source (goes into patch names, hashed)
    annotations: tuple[Annotation, ...]


@dataclass(frozen=True)
class Lesion:
    job: int
    annotation: int
    component: int
    origin: str
    patient: str
    label: int
    source_split: str | None
    image_key: str
    image: str
    mask: str  # "" for a box annotation
    mask_resized: bool
    box: Box
    lesion_pixels: int
    crop: tuple[int, int, int]  # x, y, side
    staged: str  # file name in the staging folder


@dataclass(frozen=True)
class Skipped:
    file: str
    reason: str
    origin: str = ""


@dataclass
class JobResult:
    index: int
    lesions: list[Lesion]
    skipped: list[Skipped]


def pick_image(files: tuple[str, ...]) -> str:
    """The mammogram among a series folder's files: the only one, else the largest by header."""
    if len(files) == 1:
        return files[0]
    sizes = {f: image_shape(f) for f in files}
    areas = sorted(((r * c, f) for f, (r, c) in sizes.items()), reverse=True)
    if areas[0][0] == areas[1][0]:
        raise UnreadableFile(Path(files[0]).parent, f"{len(files)} images of the same size; cannot tell which is the mammogram")
    return areas[0][1]


def _fit_mask(values: np.ndarray, shape: tuple[int, int], recipe: PatchRecipe) -> tuple[np.ndarray, bool]:
    """Boolean mask at the image's size; resized (nearest) within tolerance, else LesionError."""
    mask = values > 0
    if mask.shape == shape:
        return mask, False
    (mr, mc), (ir, ic) = mask.shape, shape
    if abs(mr - ir) > recipe.mask_size_tolerance * ir or abs(mc - ic) > recipe.mask_size_tolerance * ic:
        raise LesionError(f"mask {mc}×{mr} px does not match the {ic}×{ir} image "
                          f"(more than recipe.mask_size_tolerance={recipe.mask_size_tolerance})")
    from PIL import Image

    resized = Image.fromarray(mask.view(np.uint8) * 255).resize((ic, ir), Image.Resampling.NEAREST)
    return np.asarray(resized) > 0, True


def pick_mask(ann: Annotation, shape: tuple[int, int]) -> tuple[str, np.ndarray]:
    """(file, stored values) of the annotation's mask.

    By content when asked (CBIS-DDSM): among the candidates at least a quarter of the image's
    area, the binary ones are masks; grey-level or small files are cropped lesion images.
    """
    if not ann.pick_mask_by_content:
        (only,) = ann.mask_files
        return only, read_mask(only)
    area = shape[0] * shape[1]
    masks: list[tuple[str, np.ndarray]] = []
    others: list[str] = []  # crops, grey-level or unreadable files, for the reason
    for f in ann.mask_files:
        try:
            r, c = image_shape(f)
            if r * c < _MIN_MASK_AREA_SHARE * area:
                others.append(f"{Path(f).name} (small: a crop)")
                continue
            values = read_mask(f)
        except UnreadableFile as e:  # a damaged crop must not cost the lesion its mask
            others.append(f"{Path(f).name} ({e.reason})")
            continue
        if is_binary(values):
            masks.append((f, values))
        else:
            others.append(f"{Path(f).name} (grey-level: a crop)")
    if not masks:
        raise LesionError("no ROI mask (a binary image at least a quarter of the mammogram's size) among: "
                          + "; ".join(others))
    same_size = [m for m in masks if m[1].shape == shape] or masks
    first = same_size[0]
    if any(not np.array_equal(first[1], other[1]) for other in same_size[1:]):
        raise LesionError(f"{len(same_size)} different binary masks for one lesion: "
                          + ", ".join(Path(m[0]).name for m in same_size))
    return first


def _lesions_of(ann: Annotation, image: DisplayImage, recipe: PatchRecipe) -> tuple[str, bool, list[Component], list[str]]:
    if ann.box is not None:
        check_box(ann.box, image.shape)
        _, _, w, h = ann.box
        return "", False, [Component(ann.box, w * h)], []
    mask_file, values = pick_mask(ann, image.shape)
    mask, resized = _fit_mask(values, image.shape, recipe)
    comps, notes = components(mask, recipe)
    return mask_file, resized, comps, notes


def process_image(job: ImageJob, recipe: PatchRecipe, staging: str, seed: int) -> JobResult:
    """Cut every lesion of one mammogram; write the patches into `staging`."""
    result = JobResult(job.index, [], [])
    try:
        image_file = pick_image(job.image_files)
        image = read_image(image_file)
    except UnreadableFile as e:
        result.skipped += [Skipped(e.path, e.reason, a.origin) for a in job.annotations]
        return result
    seen_boxes: dict[Box, str] = {}
    for ai, ann in enumerate(job.annotations):
        try:
            mask_file, resized, comps, notes = _lesions_of(ann, image, recipe)
        except UnreadableFile as e:
            result.skipped.append(Skipped(e.path, e.reason, ann.origin))
            continue
        except LesionError as e:
            result.skipped.append(Skipped(_annotation_file(ann, image_file), str(e), ann.origin))
            continue
        result.skipped += [Skipped(mask_file, note, ann.origin) for note in notes]
        for ci, comp in enumerate(comps):
            if comp.box in seen_boxes:  # two rows annotating one lesion (as the reference, keep one)
                result.skipped.append(Skipped(mask_file or image_file,
                                              f"same lesion box as {seen_boxes[comp.box]}", ann.origin))
                continue
            seen_boxes[comp.box] = ann.origin
            rng = np.random.default_rng([seed, job.index, ai, ci]) if recipe.jitter > 0 else None
            crop = square_crop(comp.box, image.shape, recipe, rng)
            patch = cut_patch(image, crop, recipe.size)
            staged = f"{job.index}-{ai}-{ci}.png"
            _save_png(patch, Path(staging) / staged)
            result.lesions.append(Lesion(
                job.index, ai, ci, ann.origin, ann.patient, ann.label, ann.source_split, job.image_key,
                image_file, mask_file, resized, comp.box, comp.pixels, (crop.x, crop.y, crop.side), staged))
    return result


def _annotation_file(ann: Annotation, image_file: str) -> str:
    """The file (or folder) a lesion problem is reported against."""
    if len(ann.mask_files) == 1:
        return ann.mask_files[0]
    if ann.mask_files:
        return str(Path(ann.mask_files[0]).parent)
    return image_file


def _save_png(patch: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(patch).save(path, optimize=False)
