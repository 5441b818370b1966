"""Decode one patch file into 8-bit grayscale pixels: the one place that opens image files.

Training, evaluation, scoring and `dpmammo data index` all read images through here, so a bad
file gets the same one-line reason everywhere (empty, truncated, not an image, too large, ...).
No torch here: `dpmammo data index` checks a data set without loading it.
"""

from __future__ import annotations

import multiprocessing
import os
import struct
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from dpmammo.errors import DpMammoError

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# 16-bit files are scaled by their bit depth (below); one whose values all stay under 2^12 would
# come out nearly black (0–15), so it is refused rather than silently darkened.
MIN_16BIT_MAX = 1 << 12
# Patches are resized to the model's input (128 → 224 px for Swin-T is the published pipeline), but a
# file a few pixels a side is a placeholder or a broken export: resizing it would invent the lesion.
MIN_SIDE = 8


class ImageProblem(Exception):
    """Why a file cannot be used as a patch, in words (the caller names the file)."""


def decode_gray(path: str | Path) -> Image.Image:
    """The whole image as an 8-bit grayscale ("L") PIL image; ImageProblem says why not."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 89M and 179M pixels; a patch is a small crop, so refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if min(im.size) < MIN_SIDE:
                    raise ImageProblem(f"only {im.size[0]}×{im.size[1]} pixels, below the {MIN_SIDE}×{MIN_SIDE} a patch needs "
                                       "(a placeholder or a broken export?); remove or re-export it")
                im.load()
                return _to_gray(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageProblem(f"too large for a patch (over Pillow's {Image.MAX_IMAGE_PIXELS:,}-pixel safety limit: "
                           "a whole mammogram, or a decompression bomb?); crop lesion patches first") from None
    except UnidentifiedImageError:
        if path.is_file() and path.stat().st_size == 0:
            raise ImageProblem("empty file (0 bytes)") from None
        raise ImageProblem("not an image Pillow can read") from None
    except FileNotFoundError:
        raise ImageProblem("file not found") from None
    except SyntaxError as e:  # Pillow's PNG parser reports broken chunks as SyntaxError
        raise ImageProblem(f"corrupt PNG ({e})") from None
    except (OSError, ValueError, EOFError, zlib.error, struct.error) as e:
        raise ImageProblem(f"corrupt or truncated ({e.__class__.__name__}: {e})") from None


def _to_gray(im: Image.Image) -> Image.Image:
    if im.mode in SIXTEEN_BIT_MODES:
        # Pillow's convert("L") clips 16-bit values at 255 (nearly every pixel white). Scale by the
        # bit depth instead, 0–65535 → 0–255, as Pillow does for 16-bit RGB: the same linear map for
        # every file, so equal tissue stays equal across patches (a per-image min-max stretch would
        # not). Data with fewer significant bits should be rescaled where they are known (at extraction).
        values = np.asarray(im).astype(np.uint32)
        if values.max() < MIN_16BIT_MAX:
            raise ImageProblem(f"16-bit image whose values stay below {MIN_16BIT_MAX} (maximum {values.max()}): "
                               "scaled by its 16-bit depth it would be nearly black; rescale it to the full "
                               "16-bit range or save it as 8-bit")
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    if im.mode in ("I", "F"):
        raise ImageProblem(f"{im.mode!r} pixels (32-bit) are not supported; save patches as 8- or 16-bit PNG")
    return im.convert("L")


def read_patch(path: str, size: int) -> np.ndarray:
    """One patch as a (size, size) uint8 array; a one-line error names an unusable file and why."""
    try:
        im = decode_gray(path)
    except ImageProblem as e:
        raise DpMammoError(f"cannot read image {path}: {e}") from None
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def image_problem(path: str | Path) -> Optional[str]:
    """Why `path` cannot be used as a patch, or None when it decodes."""
    try:
        decode_gray(path)
    except ImageProblem as e:
        return str(e)
    return None


def check_images(paths: list[str], *, on_checked: Optional[Callable[[int], None]] = None,
                 workers: Optional[int] = None) -> list[tuple[str, str]]:
    """Decode every file; return (path, reason) for each one that cannot be used, in input order.

    Decoding runs in `workers` processes (default: all cores), in chunks, and `on_checked(n)` is
    called after each chunk of n files. Processes, not threads: threads were no faster on small
    patches (the GIL), and the decompression-bomb check changes warning filters, which is not
    thread-safe (benchmarks/README.md has the timing of `dpmammo data index`).
    """
    workers = workers or os.cpu_count() or 1
    chunks = [paths[i:i + CHECK_CHUNK] for i in range(0, len(paths), CHECK_CHUNK)]
    problems: list[tuple[str, str]] = []
    if workers == 1 or len(chunks) == 1:
        results = map(_check_chunk, chunks)
        for chunk, found in zip(chunks, results):
            problems += found
            if on_checked is not None:
                on_checked(len(chunk))
        return problems
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=ctx) as pool:
        for chunk, found in zip(chunks, pool.map(_check_chunk, chunks)):  # map keeps input order
            problems += found
            if on_checked is not None:
                on_checked(len(chunk))
    return problems


CHECK_CHUNK = 256


def _check_chunk(paths: list[str]) -> list[tuple[str, str]]:
    return [(path, reason) for path in paths if (reason := image_problem(path)) is not None]
