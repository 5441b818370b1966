"""Geometry of one lesion: mask → components → bounding boxes → a square crop → a patch.

The recipe (dpmammo.data.extract.config.PatchRecipe) follows the reference study: a mask is
closed so a lesion's fragments join, each connected component is its own lesion, its bounding
box grows by a margin on each side, the crop is the square around the box's centre whose side is
the larger of (longer box side + 2·margin) and min_side, moved back inside the image where it
fits, and is area-averaged down to the patch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dpmammo.data.extract.config import PatchRecipe
from dpmammo.data.extract.pixels import DisplayImage

Box = tuple[int, int, int, int]  # x, y, width, height in image pixels


class LesionError(Exception):
    """One lesion cannot be cut (empty mask, box outside the image, ...); the reason goes to skipped.csv."""


@dataclass(frozen=True)
class Component:
    box: Box
    pixels: int  # mask pixels of this lesion (before closing)


@dataclass(frozen=True)
class Crop:
    x: int
    y: int
    side: int


def components(mask: np.ndarray, recipe: PatchRecipe) -> tuple[list[Component], list[str]]:
    """The lesions in a boolean mask, and a note for each speck left out.

    Closing and labelling run on the mask's bounding region only (padded by the closing
    radius), so a 3000×5000 mask with one small lesion costs little.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        raise LesionError("the mask is empty (no lesion pixel)")
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    r = recipe.closing_radius
    # Zero padding of r on each side makes the closing exact at the region's (and image's) edges.
    region = np.pad(mask[y0:y1, x0:x1], r)
    if r > 0:
        side = 2 * r + 1  # odd, so dilation and erosion are each other's reflection
        dilated = ndimage.maximum_filter(region.view(np.uint8), size=side, mode="constant", cval=0)
        closed = ndimage.minimum_filter(dilated, size=side, mode="constant", cval=0) > 0
        closed |= region
    else:
        closed = region
    labels, n = ndimage.label(closed, structure=np.ones((3, 3), dtype=bool))  # 8-connected
    found, notes = [], []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        own = (labels[sl] == k) & region[sl]  # this component's original mask pixels
        pixels = int(own.sum())
        if pixels < recipe.min_lesion_pixels:
            notes.append(f"component of {pixels} mask px < recipe.min_lesion_pixels={recipe.min_lesion_pixels}")
            continue
        ys, xs = np.nonzero(own)
        top, left = sl[0].start + int(ys.min()) - r + y0, sl[1].start + int(xs.min()) - r + x0
        h, w = int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1
        found.append(Component((left, top, w, h), pixels))
    return found, notes


def check_box(box: Box, shape: tuple[int, int]) -> None:
    x, y, w, h = box
    rows, cols = shape
    if w < 1 or h < 1:
        raise LesionError(f"box x={x} y={y} width={w} height={h} is empty")
    if x < 0 or y < 0 or x + w > cols or y + h > rows:
        raise LesionError(f"box x={x} y={y} width={w} height={h} reaches outside the {cols}×{rows} image")


def square_crop(box: Box, shape: tuple[int, int], recipe: PatchRecipe, rng: np.random.Generator | None) -> Crop:
    """The square crop around `box`; shifted back inside the image where it fits (as the reference)."""
    x, y, w, h = box
    side = max(max(w, h) + 2 * recipe.margin, recipe.min_side)
    cx, cy = x + w / 2.0, y + h / 2.0
    if recipe.jitter > 0 and rng is not None:
        dx, dy = rng.uniform(-recipe.jitter, recipe.jitter, size=2) * side
        cx, cy = cx + dx, cy + dy
    x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    rows, cols = shape
    if side <= cols:
        x0 = min(max(x0, 0), cols - side)
    if side <= rows:
        y0 = min(max(y0, 0), rows - side)
    return Crop(x0, y0, side)


def cut_patch(image: DisplayImage, crop: Crop, size: int) -> np.ndarray:
    """The crop as a size×size uint8 patch: area average when shrinking, bilinear when enlarging."""
    from PIL import Image

    region = image.region(crop.y, crop.x, crop.side)
    if crop.side == size:
        return region
    resample = Image.Resampling.BOX if crop.side > size else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(region).resize((size, size), resample))
