"""Synthetic mass patches ("phantoms") in the published layout, for tests and smoke runs.

Benign phantoms are smooth, circumscribed, roughly elliptical masses; malignant ones have a
lobulated, less sharp boundary and radial spicules. Both sit on a textured background (power-law
noise, like breast parenchyma, with faint linear strands) and carry random size, contrast,
position and pixel noise. Size, contrast and mean intensity overlap between the classes, so a
classifier has to look at the boundary (shape, spicules), not at how bright or big a blob is.
`density_gap` > 0 makes malignant masses denser by that much contrast, as real ones are on
average: the GAN tests use it, because a test-sized GAN at 32 px does not learn the boundary
shapes (tests/test_gan.py says what was measured).

Layout written (readable by `dpmammo.data.manifest.index_folder`)::

    OUT/phantom/{train,val,test}/is_benign_true|is_benign_false/
        patientphantom__<k>_image<k>_mass<k>_is_benign_<0|1>.png

train holds `n` patches, val and test `n // 2` each; classes are balanced in each split and every
patch has its own patient id k, unique across splits, so the splits are patient-disjoint.
The same seed gives byte-identical files.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from dpmammo.config import check_option
from dpmammo.errors import DpMammoError
from dpmammo.files import user_os_errors

DATASET = "phantom"
SPLITS = ("train", "val", "test")
MAX_SIZE = 1024  # a patch, not a mammogram: larger sizes only exhaust memory
_CLASS_FOLDER = {1: "is_benign_false", 0: "is_benign_true"}  # 1 = malignant, 0 = benign


def _power_noise(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Zero-mean, unit-std noise with a 1/f^beta amplitude spectrum (parenchyma-like texture)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    fr = np.sqrt(fy**2 + fx**2)
    fr[0, 0] = 1.0
    amp = fr ** (-beta)
    amp[0, 0] = 0.0
    x = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * amp, s=(size, size))
    return ((x - x.mean()) / (x.std() + 1e-12)).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def make_patch(rng: np.random.Generator, malignant: bool, size: int = 128, density_gap: float = 0.0) -> np.ndarray:
    """One phantom as a (size, size) uint8 array. All randomness comes from `rng`; `density_gap` is
    added to a malignant mass's contrast (see `make_phantoms`)."""
    f32 = np.float32
    s = size / 128.0  # geometry is specified for 128 px and scaled
    yy, xx = np.mgrid[0:size, 0:size].astype(f32)

    # Background: smooth tissue texture, a gentle gradient, faint linear strands (both classes).
    img = _power_noise(rng, size, beta=rng.uniform(1.6, 2.2)) * f32(rng.uniform(0.05, 0.09))
    img += _power_noise(rng, size, beta=1.0) * f32(rng.uniform(0.01, 0.025))
    g = rng.uniform(-0.08, 0.08, size=2) / size
    img += f32(0.30 + rng.uniform(-0.06, 0.06)) + f32(g[0]) * (xx - size / 2) + f32(g[1]) * (yy - size / 2)
    n_strands = int(rng.integers(0, 4))
    if n_strands:
        ang = rng.uniform(0, np.pi, n_strands).astype(f32)[:, None, None]
        off = (rng.uniform(-0.45, 0.45, n_strands) * size).astype(f32)[:, None, None]
        wid = (rng.uniform(0.8, 1.8, n_strands) * s).astype(f32)[:, None, None]
        amp = rng.uniform(0.02, 0.06, n_strands).astype(f32)[:, None, None]
        dist = (xx - size / 2) * np.sin(ang) - (yy - size / 2) * np.cos(ang) - off
        img += (amp * np.exp(-((dist / wid) ** 2))).sum(0)

    # Mass geometry: the same size, contrast and position distributions for both classes.
    cx, cy = size / 2 + rng.uniform(-4, 4, size=2) * s
    radius = rng.uniform(11, 24) * s
    contrast = rng.uniform(0.22, 0.45)
    dx, dy = xx - f32(cx), yy - f32(cy)
    rho = np.sqrt(dx**2 + dy**2)
    z = (dx + 1j * dy) / np.maximum(rho, f32(1e-6))  # e^{i theta}, complex64

    # Boundary r(theta) = R (1 + ecc cos 2(theta - phi) + sum_k a_k cos(k theta + phi_k)).
    ks = np.arange(2, 10)
    amps = np.empty(ks.size)
    amps[0] = rng.uniform(0.0, 0.3)  # ellipticity, both classes
    if malignant:
        # Lobulated boundary: sizeable mid harmonics; a softer, less defined margin.
        amps[1:] = rng.uniform(0.02, 0.08, size=ks.size - 1) * rng.uniform(0.5, 1.2)
        edge = rng.uniform(1.2, 2.6) * s
    else:
        amps[1:] = rng.uniform(0.0, 0.03, size=ks.size - 1)
        edge = rng.uniform(0.7, 1.6) * s
    phases = rng.uniform(0, 2 * np.pi, size=ks.size)
    coef = (amps * np.exp(-1j * phases)).astype(np.complex64)  # Re(c z^k) = a cos(k theta + phi)
    zk = z * z
    boundary = np.ones_like(rho)
    for c in coef:
        boundary += (c * zk).real
        zk = zk * z
    r_theta = f32(radius) * boundary
    body = _sigmoid((r_theta - rho) / f32(edge))
    # Slightly denser core, as in real masses.
    dome = 0.85 + 0.15 * np.clip(1.0 - (rho / np.maximum(r_theta, f32(1e-6))) ** 2, 0.0, 1.0)
    mass = body * dome

    if malignant:
        # Radial spicules: thin, tapering, slightly curved lines leaving the boundary.
        # About a quarter of malignant masses show few, faint spicules (class overlap).
        subtle = rng.uniform() < 0.25
        n_spic = int(rng.integers(2, 7)) if subtle else int(rng.integers(8, 17))
        strength = rng.uniform(0.2, 0.5) if subtle else rng.uniform(0.5, 0.9)
        alpha = rng.uniform(-np.pi, np.pi, n_spic)
        length = rng.uniform(0.7, 1.5, n_spic) * radius
        width = rng.uniform(1.2, 2.2, n_spic) * s
        bend = rng.uniform(-0.25, 0.25, n_spic) / max(radius, 1.0)
        level = strength * rng.uniform(0.7, 1.0, n_spic)
        col = lambda v: v.astype(f32)[:, None, None]  # noqa: E731
        along = dx * col(np.cos(alpha)) + dy * col(np.sin(alpha))
        perp = dy * col(np.cos(alpha)) - dx * col(np.sin(alpha))
        from_edge = along - f32(radius)
        perp = perp - col(bend) * from_edge * np.abs(from_edge)
        t = np.clip((along - f32(0.6 * radius)) / col(0.4 * radius + length), 0.0, 1.0)
        w = col(width) * (1.0 - 0.7 * t)
        line = np.exp(-((perp / w) ** 2)) * (1.0 - t) * (along > f32(0.6 * radius))
        mass = np.maximum(mass, (col(level) * line).max(0))

    img += f32(contrast + (density_gap if malignant else 0.0)) * mass
    img += rng.normal(0.0, rng.uniform(0.015, 0.035), size=img.shape).astype(f32)  # detector noise
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_phantoms(out: str | Path, n: int = 400, seed: int = 0, size: int = 128, density_gap: float = 0.0, *,
                  force: bool = False) -> Path:
    """Write phantom patches under `out`/phantom and return `out`.

    `index_folder(out)` then gives the sets ``phantom/train`` (n patches), ``phantom/val`` and
    ``phantom/test`` (n // 2 each). An existing `out`/phantom is replaced as a whole only with
    `force`, and only when it holds nothing but phantom patches (what this function writes).
    """
    if n < 4:
        raise DpMammoError(f"phantoms: n must be at least 4 (both classes in every split), got {n}")
    if not 32 <= size <= MAX_SIZE:
        raise DpMammoError(f"phantoms: size must be between 32 and {MAX_SIZE} px, got {size}")
    check_option("--n", n)
    check_option("--seed", seed, minimum=0)
    if not 0.0 <= density_gap <= 0.5:
        raise DpMammoError(f"phantoms: density_gap must be in [0, 0.5] (added contrast), got {density_gap}")
    out = Path(out).expanduser()
    final = out / DATASET
    if final.exists():
        if not force:
            raise DpMammoError(f"{final} exists; pass --force to replace the phantoms there, or choose another OUT")
        foreign = [p for p in final.rglob("*") if p.is_file() and not _PHANTOM_FILE.fullmatch(
            p.relative_to(final).as_posix())]
        if foreign or not final.is_dir():
            raise DpMammoError(f"{final} holds files that are not phantom patches (e.g. {foreign[0] if foreign else final}); "
                               "it is not replaced, even with --force: choose another OUT")
    with user_os_errors(out):
        return _write_phantoms(out, n, seed, size, density_gap)


# What _write_phantoms writes, relative to out/phantom: the only files --force may replace.
_PHANTOM_FILE = re.compile(r"(train|val|test)/is_benign_(true|false)/patientphantom__\d+_image\d+_mass\d+_is_benign_[01]\.png")


def _write_phantoms(out: Path, n: int, seed: int, size: int, density_gap: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    final = out / DATASET
    tmp = Path(tempfile.mkdtemp(prefix=f".{DATASET}.tmp-", dir=out))
    try:
        k = 0
        for split_i, (split, count) in enumerate(zip(SPLITS, (n, n // 2, n // 2))):
            labels = np.array([1] * (count // 2) + [0] * (count - count // 2))
            labels = np.random.default_rng([seed, 1_000_003, split_i]).permutation(labels)
            for folder in _CLASS_FOLDER.values():
                (tmp / split / folder).mkdir(parents=True)
            for label in labels:
                rng = np.random.default_rng([seed, k])
                arr = make_patch(rng, bool(label), size, density_gap)
                name = f"patient{DATASET}__{k}_image{k}_mass{k}_is_benign_{1 - int(label)}.png"
                Image.fromarray(arr).save(tmp / split / _CLASS_FOLDER[int(label)] / name,
                                                    optimize=False)
                k += 1
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
