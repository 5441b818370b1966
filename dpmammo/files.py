"""Where a command may write, and how: the rules that keep users' files safe.

- Atomic writes: a crash or a full disk leaves the previous complete file or none, never half of one.
- `check_out`: an output path is refused (one line) when it cannot be a folder or file of ours (a
  file, under a file, a dangling symlink, a system folder, a name too long) or when it is, holds or
  lies inside one of the command's inputs; every path resolved first (symlinks, `.`, `..`).
- `exclusive`: one process at a time writes one output (a lock file beside it).
- `staged_folder`: a folder output is written whole into a temporary sibling and moved into place.

A write that fails for a reason the user must fix (no space, no permission, read-only disk) is a
`DpMammoError` naming the path, not a traceback; whatever was being written is removed.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from dpmammo.errors import DpMammoError

# OS errors a user fixes (space, quota, permissions, the path itself): one line, not a traceback.
USER_OS_ERRORS = {
    errno.ENOSPC: "the disk is full; free some space",
    errno.EDQUOT: "the disk quota is exceeded; free some space",
    errno.EFBIG: "the file is larger than this system allows here; free space or choose another place",
    errno.EACCES: "permission denied; choose a place you may write to",
    errno.EPERM: "operation not permitted; choose a place you may write to",
    errno.EROFS: "the file system is read-only; choose another place",
    errno.ENAMETOOLONG: "a name is too long; choose a shorter one",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "the path is a folder, not a file",
    errno.ELOOP: "too many levels of symbolic links",
}
# Pseudo file systems: nothing of ours belongs there.
SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"))
NAME_MAX = 255  # bytes per path component on the file systems dpmammo runs on


def os_error(e: OSError, path: str | Path) -> DpMammoError:
    """The one line for an OSError whose errno is in USER_OS_ERRORS."""
    return DpMammoError(f"cannot write {path}: {e.strerror} ({USER_OS_ERRORS[e.errno]})")


@contextmanager
def user_os_errors(path: str | Path) -> Iterator[None]:
    """Turn an OSError the user must fix (see USER_OS_ERRORS) into a DpMammoError naming `path`."""
    try:
        yield
    except OSError as e:
        if e.errno not in USER_OS_ERRORS:
            raise
        raise os_error(e, getattr(e, "filename", None) or path) from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to (with any writer: torch.save, safetensors, csv);
    it replaces `path` only when the block ends without an error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with user_os_errors(path):
            yield tmp
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_figure(fig, path: str | Path) -> None:
    """A matplotlib figure written atomically (format from the suffix of `path`), then closed."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False))


# --- where an output may go ----------------------------------------------------------------

def resolved(path: str | Path) -> Path:
    """`path` with `~`, symlinks, `.` and `..` resolved (parts that do not exist yet kept as written)."""
    return Path(path).expanduser().resolve()


def _dangling(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def check_writable(out: str | Path, flag: str = "--out", *, folder: bool = True) -> Path:
    """Refuse an output path that cannot hold a new folder (or file) of ours; returns it resolved.
    Nothing is created."""
    given = Path(out).expanduser()
    for part in given.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise DpMammoError(f"{flag} {str(out)[:80]}…: a name in it is {len(os.fsencode(part))} bytes long, "
                               f"more than the {NAME_MAX} a file system allows; choose a shorter name")
    for p in (given, *given.parents):
        if _dangling(p):
            raise DpMammoError(f"{flag} {out}: {p} is a symbolic link to {os.readlink(p)}, which does not exist; "
                               "remove the link or choose another path")
    path = given.resolve()
    if any(path == s or path.is_relative_to(s) for s in SYSTEM_FOLDERS):
        raise DpMammoError(f"{flag} {out} lies in {next(s for s in SYSTEM_FOLDERS if path.is_relative_to(s))}, a "
                           "system folder; choose a folder of your own")
    if path.exists():
        if folder and not path.is_dir():
            raise DpMammoError(f"{flag} {out} is a file, not a folder; choose a folder")
        if not folder and path.is_dir():
            raise DpMammoError(f"{flag} {out} is a folder, not a file; name a file")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise DpMammoError(f"{flag} {out} lies under {existing}, which is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DpMammoError(f"{flag} {out}: no permission to write in {existing}; choose a folder you may write to")
    return path


def check_out(out: str | Path, inputs: Iterable[tuple[str, Optional[str | Path]]], flag: str = "--out", *,
              folder: bool = True) -> Path:
    """The one check every command makes before it touches anything: `out` can be written
    (`check_writable`) and is not, does not hold and does not lie inside any of `inputs` (pairs of
    what the input is and its path; None entries are skipped). Returns `out` resolved.

    Example:
        >>> check_out("runs/gan/samples", [("the generator run", "runs/gan")])  # doctest: +SKIP
        DpMammoError: --out runs/gan/samples lies inside the generator run runs/gan; ...
    """
    path = check_writable(out, flag, folder=folder)
    for what, given in inputs:
        if given is None:
            continue
        inp = resolved(given)
        if path == inp:
            relation = "is"
        elif path.is_relative_to(inp):
            relation = "lies inside"
        elif inp.is_relative_to(path):
            relation = "holds"
        else:
            continue
        raise DpMammoError(f"{flag} {out} {relation} {what} {given}; an output must not overlap an input of the "
                           "same command (it could overwrite or delete it): choose another " + flag)
    return path


# --- one writer per output, written whole ---------------------------------------------------

@contextmanager
def exclusive(path: Path, what: str = "writing") -> Iterator[None]:
    """Hold `.NAME.lock` beside `path` (flock: released by the kernel if the process dies) so that
    two processes never write one output; a second one is refused at once. The lock file is
    removed on release; one left by a killed process is taken over."""
    lock = path.with_name(f".{path.name}.lock")
    while True:
        with user_os_errors(lock):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DpMammoError(f"another dpmammo process is {what} {path}; wait for it or choose another --out") from None
        try:  # the holder before us may have removed the file after we opened it: lock the current one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def check_replaceable(out: Path, force: bool, *, marker: str, command: str) -> None:
    """`out` is new or empty, or (with `force`) a folder `command` wrote: it holds `marker`. Such a
    folder is replaced only at the very end (staged_folder)."""
    if out.exists() and not out.is_dir():
        raise DpMammoError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise DpMammoError(f"--out {out} exists and is not empty; choose another folder or pass --force to replace it")
        if not (out / marker).is_file():
            raise DpMammoError(f"--out {out} is not a folder written by `{command}` (no {marker}); "
                               "--force replaces only such a folder: choose another --out")


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A new temporary folder beside `out` to write the whole output into; when the block ends
    without an error it replaces `out` (an existing `out` is moved aside first and removed last),
    otherwise it is removed and `out` stays as it was. Hold `exclusive(out)` around it: what a
    killed writer of `out` left beside it is cleaned up first (a previous `out` it had moved aside
    is put back)."""
    with user_os_errors(out):
        _clean_after_killed_writer(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with user_os_errors(out):
            yield tmp
            publish_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_folder(tmp: Path, out: Path) -> None:
    """Move the finished folder `tmp` into place at `out`; an old `out` goes last."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        tmp.replace(out)  # an empty folder is replaced in one step
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    out.rename(old / out.name)
    try:
        tmp.rename(out)
    except BaseException:
        (old / out.name).rename(out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _clean_after_killed_writer(out: Path) -> None:
    for old in out.parent.glob(f".{glob.escape(out.name)}.old-*"):
        if (old / out.name).exists() and not out.exists():
            (old / out.name).rename(out)
        shutil.rmtree(old, ignore_errors=True)
    for tmp in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
