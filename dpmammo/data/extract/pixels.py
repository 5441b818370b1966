"""Read mammograms and masks (DICOM, PNG, TIFF) into what a radiologist would look at.

A DICOM's stored values go through its Modality LUT (rescale), then its VOI LUT or window when
it has one (pydicom.pixels.apply_modality_lut / apply_voi_lut), then min–max over the whole
image to 8 bit; MONOCHROME1 (low value = bright) is inverted so that dense tissue is bright in
every patch. PNG and TIFF go through the same min–max. The reference study min–max scaled the
raw DICOM values; CBIS-DDSM carries no VOI data, so its patches are the same either way.

For integer images the chain is evaluated once per stored value (a lookup table of at most
65,536 entries) instead of once per pixel; a patch is then a table lookup of its crop.

A file that cannot be read raises `UnreadableFile` with the reason; the caller lists it in
skipped.csv and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DICOM_SUFFIXES = {".dcm", ".dicom", ""}
PIL_SUFFIXES = {".png", ".tif", ".tiff"}
_LUT_MAX_ENTRIES = 1 << 20  # integer ranges wider than this are mapped per pixel instead


class UnreadableFile(Exception):
    """`path` could not be used; `reason` says why (goes to skipped.csv)."""

    def __init__(self, path: str | Path, reason: str):
        reason = " ".join(reason.split())  # decoder messages span lines; skipped.csv and errors want one
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES


def _dcmread(path: Path, header_only: bool = False):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except Exception as e:  # pydicom raises many types for a damaged file; all mean "unreadable"
        raise UnreadableFile(path, f"not a readable DICOM file ({e.__class__.__name__}: {e})") from None


def _dicom_pixels(path: Path):
    """(stored values as a 2-D array, the dataset) of a single-frame greyscale DICOM."""
    ds = _dcmread(path)
    if "PixelData" not in ds:
        raise UnreadableFile(path, "DICOM file without pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise UnreadableFile(path, f"not a greyscale image ({ds.get('PhotometricInterpretation', '?')})")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise UnreadableFile(path, f"multi-frame DICOM ({ds.NumberOfFrames} frames); expected one mammogram")
    try:
        arr = ds.pixel_array
    except Exception as e:  # a decoder error or truncated data: both make the file unusable
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        hint = ""
        if syntax is not None and syntax.is_compressed:
            hint = f" [compressed ({syntax.name}): install the decoders with `pip install dpmammo[dicom]`]"
        raise UnreadableFile(path, f"cannot decode pixel data ({e.__class__.__name__}: {e}){hint}") from None
    if arr.ndim != 2:
        raise UnreadableFile(path, f"expected a 2-D image, got pixel data of shape {arr.shape}")
    return arr, ds


def _pil_pixels(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) != 1:
                raise UnreadableFile(path, f"{im.n_frames} frames; expected one image")
            if im.mode in ("RGB", "RGBA"):
                rgb = np.asarray(im.convert("RGB"))
                if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                    raise UnreadableFile(path, "colour image; a mammogram must be greyscale")
                return rgb[..., 0]
            if im.mode in ("1", "L", "LA", "P"):
                return np.asarray(im.convert("L"))
            return np.asarray(im)  # I;16*, I, F: keep the stored values
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UnreadableFile(path, f"not a readable image ({e.__class__.__name__}: {e})") from None


def read_pixels(path: str | Path):
    """(stored values, DICOM dataset or None) of a DICOM, PNG or TIFF file."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableFile(path, "file not found")
    if path.suffix.lower() in PIL_SUFFIXES:
        return _pil_pixels(path), None
    if _is_dicom(path):
        return _dicom_pixels(path)
    raise UnreadableFile(path, f"unknown image type {path.suffix!r} (expected .dcm, .png, .tif, .tiff)")


def image_shape(path: str | Path) -> tuple[int, int]:
    """(rows, columns) from the header only: cheap, used to tell mammograms, masks and crops apart."""
    path = Path(path)
    if _is_dicom(path):
        ds = _dcmread(path, header_only=True)
        try:
            return int(ds.Rows), int(ds.Columns)
        except AttributeError:
            raise UnreadableFile(path, "DICOM header without Rows/Columns") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, UnidentifiedImageError) as e:
        raise UnreadableFile(path, f"not a readable image ({e.__class__.__name__}: {e})") from None


@dataclass(frozen=True)
class DisplayImage:
    """A mammogram ready to cut: 8-bit display values of any region, on demand.

    `display[y, x] = lut[stored[y, x] - offset]` for integer images (lut is None for float
    images, whose display values are computed whole and kept in `stored`).
    """

    path: str
    stored: np.ndarray
    lut: np.ndarray | None
    offset: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.stored.shape  # type: ignore[return-value]

    def region(self, y0: int, x0: int, side: int) -> np.ndarray:
        """The side×side display region at (y0, x0); outside the image is black (background)."""
        h, w = self.shape
        out = np.zeros((side, side), dtype=np.uint8)
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + side, h), min(x0 + side, w)
        if ye > ys and xe > xs:
            crop = self.stored[ys:ye, xs:xe]
            out[ys - y0:ye - y0, xs - x0:xe - x0] = crop if self.lut is None else self.lut[crop.astype(np.int64) - self.offset]
        return out


def _to_8bit(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    scaled = (values.astype(np.float64) - vmin) * (255.0 / (vmax - vmin))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _dicom_chain(values: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    return apply_voi_lut(apply_modality_lut(values, ds), ds)


def read_image(path: str | Path) -> DisplayImage:
    """A mammogram (DICOM, PNG or TIFF) as a DisplayImage; UnreadableFile if it cannot be used."""
    stored, ds = read_pixels(path)
    inverted = ds is not None and str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    chain = (lambda v: _dicom_chain(v, ds)) if ds is not None else (lambda v: v)
    try:
        if stored.dtype.kind in "iu" and int(stored.max()) - int(stored.min()) < _LUT_MAX_ENTRIES:
            lo, hi = int(stored.min()), int(stored.max())
            ramp = np.arange(lo, hi + 1, dtype=np.int64).astype(stored.dtype)
            mapped = np.asarray(chain(ramp), dtype=np.float64)
            steps = np.diff(mapped)
            if np.all(steps >= 0) or np.all(steps <= 0):  # monotone: extremes at the extreme stored values
                vmin, vmax = min(mapped[0], mapped[-1]), max(mapped[0], mapped[-1])
            else:  # a non-monotone VOI LUT: extremes over the stored values that occur
                present = np.bincount((stored.astype(np.int64) - lo).ravel(), minlength=hi - lo + 1) > 0
                vmin, vmax = mapped[present].min(), mapped[present].max()
            if vmax <= vmin:
                raise UnreadableFile(path, "one grey value only (after the VOI LUT/window): nothing to see")
            lut = _to_8bit(mapped, vmin, vmax)
            return DisplayImage(str(path), stored, 255 - lut if inverted else lut, lo)
        mapped = np.asarray(chain(stored), dtype=np.float64)
        if not np.isfinite(mapped).all():
            raise UnreadableFile(path, "pixel values that are not finite numbers")
        vmin, vmax = float(mapped.min()), float(mapped.max())
        if vmax <= vmin:
            raise UnreadableFile(path, "one grey value only: nothing to see")
        disp = _to_8bit(mapped, vmin, vmax)
        return DisplayImage(str(path), 255 - disp if inverted else disp, None, 0)
    except UnreadableFile:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:  # malformed LUT/window data
        raise UnreadableFile(path, f"cannot apply its Modality/VOI LUT ({e.__class__.__name__}: {e})") from None


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as stored values (2-D); callers decide what counts as lesion."""
    return read_pixels(path)[0]


def is_binary(values: np.ndarray) -> bool:
    """Only two values, 0 and one other (a CBIS-DDSM ROI mask is 0/255; a crop is grey-level)."""
    top = values.max()
    return bool(top > 0) and not np.any((values != 0) & (values != top))
