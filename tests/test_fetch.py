"""dpmammo.data.fetch against a local HTTP server serving archives built here (no network)."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpmammo.data import fetch as fetch_mod
from dpmammo.data.fetch import fetch_dataset, patch_set_digest
from dpmammo.data.manifest import index_folder, summarize
from dpmammo.errors import DpMammoError

TOP = "mammo_dp-20caed79441855870bae6f7efca1cac0ca8bac7e"


def _png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), value % 256, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _layout() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(archive members, expected files under DEST) mimicking the real archive."""
    members: dict[str, bytes] = {}
    expected: dict[str, bytes] = {}
    v = 0
    patient = 0
    for dataset, splits in (("cbis-ddsm", ("train", "val", "test")), ("bcdr", ("test",))):
        for split in splits:
            for folder, is_benign in (("is_benign_false", 0), ("is_benign_true", 1)):
                for i in range(2):
                    v += 1
                    patient += 1
                    name = f"patient{dataset}__P_{patient:05d}_image{v}_mass{v}_is_benign_{is_benign}.png"
                    rel = f"{dataset}/{split}/{folder}/{name}"
                    members[f"{TOP}/dataset16062024/{rel}"] = expected[rel] = _png_bytes(v)
    for i, cls in enumerate(("malignant", "malignant", "benign", "benign")):
        v += 1
        name = f"batch_0_{i}_{cls}.png"
        members[f"{TOP}/extension/synthetic_data/cbis-ddsm/c-dcgan/{name}"] = _png_bytes(v)
        expected[f"synthetic/c-dcgan/{name}"] = _png_bytes(v)
    # Things in the archive that are not patches and must stay out.
    members[f"{TOP}/README.md"] = b"# mammo_dp\n"
    members[f"{TOP}/figures/roc.png"] = _png_bytes(250)
    members[f"{TOP}/dataset16062024/cbis-ddsm/train/notes.txt"] = b"notes"
    members[f"{TOP}/extension/synthetic_data/bcdr/c-dcgan/batch_0_0_benign.png"] = _png_bytes(251)
    return members, expected


def _targz(members: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        dirs = sorted({str(Path(n).parent) for n in members})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size))
    return buf.getvalue()


def _independent_digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{hashlib.sha256(files[rel]).hexdigest()}\n".encode())
    return h.hexdigest()


class _Server:
    def __init__(self):
        self.routes: dict[str, bytes] = {}
        self.truncated: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                if self.path in outer.truncated:  # promise more than is sent, then hang up
                    body = outer.truncated[self.path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body) * 10))
                    self.end_headers()
                    self.wfile.write(body)
                    self.close_connection = True
                    return
                body = outer.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def archive(server, tmp_path):
    members, expected = _layout()
    server.routes["/good.tar.gz"] = _targz(members)
    exp_dir = tmp_path / "expected"
    for rel, data in expected.items():
        (exp_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (exp_dir / rel).write_bytes(data)
    digest = patch_set_digest(exp_dir)
    assert digest == _independent_digest(expected)
    return server.url("/good.tar.gz"), expected, digest


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
            and p.name != fetch_mod.MARKER}


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}"))


def test_fetch_lays_out_and_verifies(archive, server, tmp_path):
    url, expected, digest = archive
    dest = tmp_path / "cache" / "mammo_dp"
    got = fetch_dataset(dest, url=url, expected_sha256=digest, progress=False)
    assert got == dest
    assert _files(dest) == expected
    assert patch_set_digest(dest) == digest
    assert _leftovers(dest.parent, dest.name) == []  # no .part, archive or temp folder
    sets = {r["set"]: (r["patches"], r["malignant"], r["benign"]) for r in summarize(index_folder(dest))}
    assert sets == {"bcdr/test": (4, 2, 2), "cbis-ddsm/test": (4, 2, 2), "cbis-ddsm/train": (4, 2, 2),
                    "cbis-ddsm/val": (4, 2, 2), "synthetic/c-dcgan": (4, 2, 2)}
    assert server.hits == {"/good.tar.gz": 1}

    # A verified set is returned without downloading again.
    assert fetch_dataset(dest, url=url, expected_sha256=digest, progress=True) == dest
    assert server.hits == {"/good.tar.gz": 1}


def test_fetch_with_progress_bar(archive, server, tmp_path):
    url, expected, digest = archive
    dest = fetch_dataset(tmp_path / "d", url=url, expected_sha256=digest, progress=True)
    assert _files(dest) == expected


def test_wrong_digest_installs_nothing(archive, server, tmp_path):
    url, _, digest = archive
    dest = tmp_path / "cache" / "mammo_dp"
    wrong = "0" * 64
    with pytest.raises(DpMammoError) as e:
        fetch_dataset(dest, url=url, expected_sha256=wrong, progress=False)
    msg = str(e.value)
    assert wrong in msg and digest in msg and str(dest) in msg
    assert not dest.exists()
    assert _leftovers(dest.parent, dest.name) == []


def test_damaged_install_of_ours_is_replaced(archive, server, tmp_path):
    url, expected, digest = archive
    dest = fetch_dataset(tmp_path / "mammo_dp", url=url, expected_sha256=digest, progress=False)
    victim = next(dest.rglob("*.png"))
    victim.write_bytes(b"damaged")
    assert fetch_dataset(dest, url=url, expected_sha256=digest, progress=False) == dest
    assert server.hits["/good.tar.gz"] == 2
    assert _files(dest) == expected


def test_foreign_folder_is_not_overwritten(archive, tmp_path):
    url, _, digest = archive
    dest = tmp_path / "mine"
    (dest / "keep.txt").parent.mkdir()
    (dest / "keep.txt").write_text("user data")
    with pytest.raises(DpMammoError, match="does not hold a verified patch set"):
        fetch_dataset(dest, url=url, expected_sha256=digest, progress=False)
    assert (dest / "keep.txt").read_text() == "user data"


@pytest.mark.parametrize("evil", ["../evil.png", f"{TOP}/dataset16062024/../../evil.png", "/tmp/evil-abs.png"])
def test_unsafe_member_is_refused(server, tmp_path, evil):
    members, _ = _layout()
    info = tarfile.TarInfo(evil)
    info.size = 3
    server.routes["/evil.tar.gz"] = _targz(members, extra=[info])
    dest = tmp_path / "box" / "mammo_dp"
    with pytest.raises(DpMammoError, match="refusing archive member"):
        fetch_dataset(dest, url=server.url("/evil.tar.gz"), expected_sha256=None, progress=False)
    assert not dest.exists()
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "box" / "evil.png").exists()
    assert _leftovers(dest.parent, dest.name) == []


def test_http_error_is_one_line(server, tmp_path):
    url = server.url("/missing.tar.gz")
    with pytest.raises(DpMammoError) as e:
        fetch_dataset(tmp_path / "d", url=url, progress=False)
    assert url in str(e.value) and "404" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "d").exists() and _leftovers(tmp_path, "d") == []


def test_connection_refused_names_url(tmp_path):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.tar.gz"
    with pytest.raises(DpMammoError, match="download failed") as e:
        fetch_dataset(tmp_path / "d", url=url, progress=False)
    assert url in str(e.value)


def test_truncated_download_never_counts(server, tmp_path):
    members, _ = _layout()
    server.truncated["/cut.tar.gz"] = _targz(members)[:200]
    with pytest.raises(DpMammoError) as e:
        fetch_dataset(tmp_path / "d", url=server.url("/cut.tar.gz"), expected_sha256=None, progress=False)
    assert "cut.tar.gz" in str(e.value)
    assert not (tmp_path / "d").exists() and _leftovers(tmp_path, "d") == []


def test_not_the_archive(server, tmp_path):
    server.routes["/other.tar.gz"] = _targz({"repo-abc/README.md": b"hi"})
    with pytest.raises(DpMammoError, match="no patch files"):
        fetch_dataset(tmp_path / "d", url=server.url("/other.tar.gz"), expected_sha256=None, progress=False)


def test_default_dest_uses_cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DPMAMMO_CACHE", str(tmp_path / "c"))
    assert fetch_mod.default_dest() == tmp_path / "c" / "mammo_dp"
    monkeypatch.delenv("DPMAMMO_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fetch_mod.default_dest() == tmp_path / "home" / ".cache" / "dpmammo" / "mammo_dp"


def test_pinned_digest_matches_shared_copy(real_root):
    """PATCHES_SHA256 is the digest of the published layout (the copy the tests use)."""
    assert patch_set_digest(real_root) == fetch_mod.PATCHES_SHA256


def test_dpmammo_data_copy_is_verified_not_downloaded(real_root, monkeypatch, tmp_path):
    """With DPMAMMO_DATA set, `data fetch` checks that folder and never touches the network."""
    monkeypatch.setenv("DPMAMMO_DATA", str(real_root))
    assert fetch_dataset(url="http://127.0.0.1:9/unreachable.tar.gz") == real_root.resolve()
    bad = tmp_path / "copy"
    (bad / "x" / "y" / "is_benign_true").mkdir(parents=True)
    monkeypatch.setenv("DPMAMMO_DATA", str(bad))
    with pytest.raises(DpMammoError, match="does not hold the published patch set"):
        fetch_dataset(url="http://127.0.0.1:9/unreachable.tar.gz")
