"""Download the public mass-patch data set and lay it out as `index_folder` expects.

The source is the archive of one pinned commit of RichardObi/mammo_dp (Apache-2.0). Only the
patch folders are extracted and renamed::

    mammo_dp-<commit>/dataset16062024/<dataset>/<split>/is_benign_*/*.png  -> DEST/<dataset>/<split>/is_benign_*/
    mammo_dp-<commit>/extension/synthetic_data/cbis-ddsm/c-dcgan/*.png     -> DEST/synthetic/c-dcgan/

GitHub builds its tarballs on the fly, so the archive bytes are not stable; what is verified is
the content: `patch_set_digest` over the extracted patch files, compared with `PATCHES_SHA256`.
A download or an extraction that did not verify is never left in place as the data set.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from dpmammo.data.sets import default_cache_dir
from dpmammo.errors import DpMammoError

COMMIT = "20caed79441855870bae6f7efca1cac0ca8bac7e"
ARCHIVE_URL = f"https://github.com/RichardObi/mammo_dp/archive/{COMMIT}.tar.gz"
# patch_set_digest of the published layout (cbis-ddsm, bcdr, synthetic/c-dcgan: 5805 PNGs).
PATCHES_SHA256 = "d67bfc696e8f1da4c2e786206c0f4563534d02ad82fa2602e118268d9fff37f5"

DATASET_DIR = "mammo_dp"
MARKER = ".dpmammo-fetch.json"  # written by us: marks a folder this module may replace
_CHUNK = 1 << 20
_CLASS_DIRS = {"is_benign_true", "is_benign_false"}
_PATCH_SUFFIX = ".png"


def default_dest() -> Path:
    """`$DPMAMMO_CACHE/mammo_dp`, else `~/.cache/dpmammo/mammo_dp`."""
    return default_cache_dir().expanduser() / DATASET_DIR


def patch_set_digest(root: str | Path) -> str:
    """SHA-256 over the sorted (relative POSIX path, SHA-256 of bytes) of every PNG under `root`.

    Only patch files count (``*.png``), so notes such as SOURCE.md or our marker file do not.
    """
    root = Path(root)
    entries = []
    for p in root.rglob("*"):
        if p.suffix.lower() == _PATCH_SUFFIX and p.is_file() and not p.is_symlink():
            entries.append((p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest()))
    h = hashlib.sha256()
    for rel, digest in sorted(entries):
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()


def _target(name: str) -> PurePosixPath | None:
    """Where an archive member goes under DEST, or None if it is not a patch we keep.

    Raises DpMammoError for an unsafe member name (absolute, or with a `..` part).
    """
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DpMammoError(f"refusing archive member with an absolute path: {name!r}")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DpMammoError(f"refusing archive member with '..' in its path: {name!r}")
    if len(parts) < 2 or not parts[-1].lower().endswith(_PATCH_SUFFIX):
        return None
    rest = parts[1:]  # drop the archive's top folder, mammo_dp-<commit>/
    # dataset16062024/<dataset>/<split>/is_benign_*/<file>.png
    if len(rest) == 5 and rest[0] == "dataset16062024" and rest[3] in _CLASS_DIRS:
        return PurePosixPath(*rest[1:])
    # extension/synthetic_data/cbis-ddsm/c-dcgan/<file>.png
    if len(rest) == 5 and rest[:4] == ["extension", "synthetic_data", "cbis-ddsm", "c-dcgan"]:
        return PurePosixPath("synthetic", "c-dcgan", rest[4])
    return None


def _extract_patches(archive: Path, out: Path) -> int:
    """Copy the patch files of `archive` into `out` (layout above); returns how many."""
    count = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                target = _target(member.name)
                if target is None or not member.isfile():
                    continue
                dest = out.joinpath(*target.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:
                    continue
                with src, open(dest, "wb") as f:
                    shutil.copyfileobj(src, f, _CHUNK)
                count += 1
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DpMammoError(f"cannot extract archive {archive}: {e}") from None
    return count


def _download(url: str, part: Path, progress: bool) -> None:
    """Stream `url` into `part` (the caller renames it once complete)."""
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as f:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            got = 0
            if progress:
                from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                           TimeRemainingColumn, TransferSpeedColumn)
                with Progress(TextColumn("[bold]download"), BarColumn(), DownloadColumn(),
                              TransferSpeedColumn(), TimeRemainingColumn(), transient=True) as bar:
                    task = bar.add_task("download", total=total)
                    while chunk := resp.read(_CHUNK):
                        f.write(chunk)
                        got += len(chunk)
                        bar.update(task, advance=len(chunk))
            else:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    got += len(chunk)
            if total is not None and got != total:
                raise DpMammoError(f"download of {url} ended early: got {got} of {total} bytes; try again")
    except urllib.error.HTTPError as e:
        raise DpMammoError(f"download failed: {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DpMammoError(f"download failed: {url}: {e.reason}") from None
    except (socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise DpMammoError(f"download failed: {url}: {e.__class__.__name__}: {e}") from None


def _read_marker(dest: Path) -> dict | None:
    try:
        return json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _is_verified(dest: Path, expected: str | None) -> bool:
    if not dest.is_dir():
        return False
    marker = _read_marker(dest)
    want = expected or (marker or {}).get("patch_set_sha256")
    if not want:
        return False
    return patch_set_digest(dest) == want


def fetch_dataset(dest: str | Path | None = None, *, url: str = ARCHIVE_URL,
                  expected_sha256: str | None = PATCHES_SHA256, progress: bool = True) -> Path:
    """Download and lay out the public patch set in `dest` (default: the user cache); return it.

    A `dest` that already holds a verified set is returned as is, without downloading. With
    `expected_sha256=None` the content is not checked against a pin (only recorded).
    """
    if dest is None and os.environ.get("DPMAMMO_DATA"):
        return _verified_user_copy(Path(os.environ["DPMAMMO_DATA"]).expanduser(), expected_sha256)
    dest = Path(dest).expanduser() if dest is not None else default_dest()
    dest = dest.absolute()
    if _is_verified(dest, expected_sha256):
        return dest
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and _read_marker(dest) is None)):
        raise DpMammoError(
            f"{dest} exists and does not hold a verified patch set; remove it or choose another folder"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    archive = dest.parent / f".{dest.name}.download.tar.gz"
    part = archive.with_name(archive.name + ".part")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        _download(url, part, progress)
        part.replace(archive)
        n = _extract_patches(archive, tmp)
        if n == 0:
            raise DpMammoError(f"no patch files found in the archive from {url}: is it the mammo_dp archive?")
        got = patch_set_digest(tmp)
        if expected_sha256 is not None and got != expected_sha256:
            raise DpMammoError(
                f"downloaded patch set does not verify for {dest}: expected sha256 {expected_sha256}, "
                f"got {got}; nothing was installed (the source changed or the download was damaged)"
            )
        (tmp / MARKER).write_text(json.dumps({"url": url, "patch_set_sha256": got, "patches": n}, indent=1))
        if dest.exists():  # an earlier fetch of ours that no longer verifies: replace it
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    finally:
        for p in (part, archive):
            p.unlink(missing_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _verified_user_copy(root: Path, expected: str | None) -> Path:
    """DPMAMMO_DATA points at a copy the user already has: check it instead of downloading."""
    if not root.is_dir():
        raise DpMammoError(f"DPMAMMO_DATA={root} is not a folder; fix it or unset it to download the data")
    if expected is not None and patch_set_digest(root) != expected:
        raise DpMammoError(f"DPMAMMO_DATA={root} does not hold the published patch set (sha256 differs); "
                           "unset DPMAMMO_DATA to download it, or use your folder via data.root")
    return root.resolve()
