"""Procedural images on the fly (`generate`) and as a folder (`write_procedural`, `read_procedural`).

Determinism: image i of (kind, seed, size) depends on those alone, not on which range is asked
for. Images are made in blocks of `BLOCK`; block b draws from a torch generator seeded with
SeedSequence([seed, crc32(kind), b]), so ranges compose and no two kinds or seeds share a stream.
Bytes repeat on one installation (torch version and CPU); floating-point differences across
versions may change a pixel by one grey level, which the folder's spot check reports.

A folder holds images.npy (N, S, S) uint8, labels.npy (N,) int64 and provenance.json, written last
as the mark of a complete set: the kind, its classes and parameters, seed, index range, SHA-256 of
both arrays, the dpmammo version, and the privacy chain (one `public` stage: no private data).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from dpmammo import __version__
from dpmammo.data.manifest import PROVENANCE_FILE
from dpmammo.data.procedural.kinds import Kind, check_kind
from dpmammo.errors import DpMammoError
from dpmammo.files import atomic_path, write_json_atomic

BLOCK = 256
IMAGES, LABELS = "images.npy", "labels.npy"
OWN_FILES = (IMAGES, LABELS, PROVENANCE_FILE)
FORMAT = "dpmammo procedural set v1"
MIN_SIZE, MAX_SIZE = 32, 256


def check_size(size: int) -> int:
    if not (MIN_SIZE <= size <= MAX_SIZE and size % 16 == 0):
        raise DpMammoError(f"size={size} must be a multiple of 16 in [{MIN_SIZE}, {MAX_SIZE}] (the models' input sizes)")
    return size


def check_seed(seed: int) -> int:
    if seed < 0:
        raise DpMammoError(f"seed={seed} must be ≥ 0")
    return seed


def block_seed(kind: str, seed: int, block: int) -> int:
    state = np.random.SeedSequence([seed, zlib.crc32(kind.encode()), block]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@torch.no_grad()
def _block(kind: Kind, seed: int, block: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(block_seed(kind.name, seed, block))
    images, labels = kind.function()(gen, BLOCK, size, kind.params)
    return (images.clamp(0.0, 1.0) * 255.0 + 0.5).floor().to(torch.uint8), labels.long()


def generate(kind: str, *, seed: int, start: int, stop: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images start..stop-1 of process `kind` with `seed`: uint8 (N, 1, size, size) and labels (N,).

    Example:
        >>> images, labels = generate("dead-leaves", seed=0, start=0, stop=512, size=64)  # doctest: +SKIP
    """
    k = check_kind(kind)
    check_size(size)
    check_seed(seed)
    if not 0 <= start < stop:
        raise DpMammoError(f"index range [{start}, {stop}) is empty or negative")
    images, labels = [], []
    with _one_thread():
        for b in range(start // BLOCK, (stop - 1) // BLOCK + 1):
            x, y = _block(k, seed, b, size)
            lo, hi = max(start - b * BLOCK, 0), min(stop - b * BLOCK, BLOCK)
            images.append(x[lo:hi])
            labels.append(y[lo:hi])
    return torch.cat(images).unsqueeze(1), torch.cat(labels)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Generate on one thread: a block's tensors are small and its ops many, so OpenMP's threads cost
    more than they give, most of all on a busy machine (benchmarks/procedural_speed.py measures both)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def public_stage(kind: str, seed: int, start: int, stop: int, size: int) -> dict[str, Any]:
    """The ledger record (a `StageSpend` mapping) of images start..stop-1 of a process: public."""
    return {"stage": "procedural", "run": f"{kind} seed {seed} [{start}, {stop}) {size}px", "data": [f"procedural/{kind}"],
            "guarantee": "public",
            "note": f"images {start}..{stop - 1} of the random process {kind} (seed {seed}, {size} px, dpmammo "
                    f"{__version__}): made by a program from its seed; no private data"}


def check_request(out: str | Path, kind: str, *, n: int, size: int, seed: int, force: bool) -> Kind:
    """Refuse a bad request before anything is written: an unknown kind, size, seed or count, or an
    `out` that holds anything but a procedural set (and that one without `force`)."""
    k = check_kind(kind)
    check_size(size)
    check_seed(seed)
    if n < 1:
        raise DpMammoError(f"--n {n}: need at least one image")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DpMammoError(f"{out} is a file; choose a folder")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if present:
        foreign = [p for p in present if p not in OWN_FILES]
        if foreign:
            raise DpMammoError(f"{out} holds files dpmammo did not write there ({', '.join(foreign[:3])}); choose "
                               "a new or empty folder")
        if not force:
            raise DpMammoError(f"{out} already holds a procedural set; choose another folder or pass --force to "
                               "replace it")
    return k


def write_procedural(out: str | Path, kind: str, *, n: int, size: int, seed: int, force: bool = False,
                     on_block: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """Write images 0..n-1 of process `kind` to folder `out`; return its provenance.

    `out` must be new or empty; with `force`, a procedural set written there before is replaced,
    and a folder holding anything else is refused. `on_block(k)` is told after each k images.
    """
    k = check_request(out, kind, n=n, size=size, seed=seed, force=force)
    out = Path(out).expanduser()
    (out / PROVENANCE_FILE).unlink(missing_ok=True)  # the set is incomplete from here until rewritten
    out.mkdir(parents=True, exist_ok=True)

    digest, counts = hashlib.sha256(), np.zeros(len(k.classes), dtype=np.int64)
    labels = np.empty(n, dtype=np.int64)
    with atomic_path(out / IMAGES) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size))
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            x, y = generate(kind, seed=seed, start=start, stop=stop, size=size)
            block = x[:, 0].numpy()
            arr[start:stop] = block
            labels[start:stop] = y.numpy()
            digest.update(block.tobytes())
            if on_block:
                on_block(stop - start)
        arr.flush()
        del arr
    counts += np.bincount(labels, minlength=len(k.classes))
    with atomic_path(out / LABELS) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, labels)
    stage = public_stage(kind, seed, 0, n, size)
    prov = {
        "format": FORMAT, "kind": kind, "summary": k.summary, "classes": list(k.classes), "params": k.params,
        "seed": seed, "n": n, "size": size, "indices": [0, n], "block": BLOCK,
        "class_counts": counts.tolist(),
        "files": {"images": IMAGES, "labels": LABELS},
        "images_sha256": digest.hexdigest(), "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
        "private_data": "none: every image is made by the random process above from its seed",
        "guarantee": "no private data used",
        "chain": [stage],
        "rebuild": f"dpmammo data procedural OUT --kind {kind} --n {n} --size {size} --seed {seed}",
        "dpmammo_version": __version__, "torch_version": torch.__version__,
    }
    write_json_atomic(out / PROVENANCE_FILE, prov)
    return prov


def read_procedural(folder: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A folder written by `write_procedural`: images (N, S, S) uint8 (memory-mapped), labels, provenance.

    Checked before use: the provenance is dpmammo's, the kind is registered with the same
    parameters, both arrays match their SHA-256, and the first images regenerate byte for byte
    from (kind, seed): the set is what its provenance says, so its `public` stage holds.
    """
    folder = Path(folder).expanduser()
    prov_path = folder / PROVENANCE_FILE
    if not prov_path.is_file():
        raise DpMammoError(f"{folder} has no {PROVENANCE_FILE}: not a complete set written by `dpmammo data procedural`")
    try:
        prov = json.loads(prov_path.read_text())
    except ValueError:
        raise DpMammoError(f"{prov_path} is not JSON; rewrite the set with `dpmammo data procedural --force`") from None
    if not isinstance(prov, dict) or prov.get("format") != FORMAT:
        raise DpMammoError(f"{folder} is not a procedural set ({PROVENANCE_FILE} format is not {FORMAT!r})")
    k = check_kind(prov["kind"])
    if prov["params"] != k.params or prov["classes"] != list(k.classes):
        raise DpMammoError(f"{folder} was made by another version of the {k.name} process (its parameters "
                           f"differ); regenerate it: {prov['rebuild']}")
    try:
        images = np.load(folder / IMAGES, mmap_mode="r")
        labels = np.load(folder / LABELS)
    except (OSError, ValueError) as e:
        raise DpMammoError(f"cannot read the arrays in {folder} ({e.__class__.__name__}); regenerate the set: "
                           f"{prov['rebuild']}") from None
    n, size = prov["n"], prov["size"]
    if images.shape != (n, size, size) or images.dtype != np.uint8 or labels.shape != (n,):
        raise DpMammoError(f"{folder}: arrays of shape {images.shape} and {labels.shape}, provenance says {n} images "
                           f"of {size} px; regenerate the set: {prov['rebuild']}")
    digest = hashlib.sha256()
    for start in range(0, n, 4096):
        digest.update(np.ascontiguousarray(images[start:start + 4096]).tobytes())
    if digest.hexdigest() != prov["images_sha256"] or hashlib.sha256(labels.tobytes()).hexdigest() != prov["labels_sha256"]:
        raise DpMammoError(f"{folder}: the arrays do not match the SHA-256 in {PROVENANCE_FILE} (changed after they "
                           f"were written); regenerate the set: {prov['rebuild']}")
    check = min(n, BLOCK)
    x, y = generate(k.name, seed=prov["seed"], start=0, stop=check, size=size)
    if not (np.array_equal(x[:, 0].numpy(), images[:check]) and np.array_equal(y.numpy(), labels[:check])):
        raise DpMammoError(f"{folder}: its first images do not regenerate from {k.name} seed {prov['seed']} on this "
                           f"installation (torch {torch.__version__}, set made with {prov.get('torch_version')}); "
                           f"regenerate the set: {prov['rebuild']}")
    return images, labels, prov
