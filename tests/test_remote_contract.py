"""One contract for every remote kind (rclone-style): sFTP, FTP (MLSD), FTP (no MLSD), FTPS.

Every test runs against a real server on loopback: OpenSSH sshd or pyftpdlib.
"""

from __future__ import annotations

import hashlib

import calendar
import os
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from ibreports.errors import RemoteFileError
from ibreports.remote import Remote, open_remote
from tests.fixtures.ftp import ftp_source
from tests.fixtures.sshd import sftp_source

KINDS = ["sftp", "ftp", "ftp-nomlsd", "ftps"]
MTIME = calendar.timegm((2026, 11, 2, 3, 4, 5))  # an old, exact second


@dataclass
class Served:
    """A running server, the folder it serves and a way to log in to it."""

    outgoing: Path
    connect: Callable[[], Remote]


@pytest.fixture(params=KINDS)
def served(request, sshd_factory, sftp_client_key, ftp_factory) -> Served:
    kind = request.param
    if kind == "sftp":
        server = sshd_factory([sftp_client_key[1]])
        source = sftp_source(server, sftp_client_key)
    else:
        server = ftp_factory(tls=kind == "ftps", mlsd=kind != "ftp-nomlsd")
        source = ftp_source(server)
    return Served(server.root / "outgoing", lambda: open_remote(source))


@pytest.fixture(scope="module")
def payloads() -> dict[str, bytes]:
    return {
        "U1234567.Empty.20261101.20261101.xml.pgp": b"",
        "U1234567.Small.20261101.20261101.xml": b"<FlexQueryResponse/>\n",
        "U1234567.Big.20261101.20261101.xml.pgp": os.urandom(3 * 1024 * 1024 + 17),
    }


def put(folder: Path, name: str, data: bytes, mtime: float = MTIME) -> Path:
    path = folder / name
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def test_list_shows_regular_files_with_size_and_mtime(served, payloads):
    for name, data in payloads.items():
        put(served.outgoing, name, data)
    (served.outgoing / "subfolder").mkdir()
    (served.outgoing / "subfolder" / "inner.xml").write_bytes(b"x")
    os.symlink(served.outgoing / "subfolder", served.outgoing / "link-to-folder")
    with served.connect() as remote:
        listing = {f.name: f for f in remote.list()}
    assert set(listing) == set(payloads)
    for name, data in payloads.items():
        assert listing[name].size == len(data)
        assert abs(listing[name].mtime - MTIME) <= 2


def test_list_of_empty_folder_is_empty(served):
    with served.connect() as remote:
        assert remote.list() == []


def test_download_is_byte_exact_and_private(served, payloads, tmp_path):
    for name, data in payloads.items():
        put(served.outgoing, name, data)
    old_umask = os.umask(0)  # 0600 must come from the code, not from a friendly umask
    try:
        with served.connect() as remote:
            assert len(remote.list()) == len(payloads)  # a listing first: FTP must switch back to binary
            for i, (name, data) in enumerate(payloads.items()):
                dest = tmp_path / f"{i}.download"
                seen: list[int] = []
                digest = remote.download(name, dest, len(data), seen.append)
                assert dest.read_bytes() == data
                assert digest == hashlib.sha256(data).hexdigest()  # hashed on the way, no second read
                assert dest.stat().st_mode & 0o777 == 0o600
                assert sum(seen) == len(data)
    finally:
        os.umask(old_umask)


def test_parallel_downloads_from_four_threads(served, tmp_path):
    files = {f"U{7000000 + i}.Daily.20261101.20261101.xml.pgp": os.urandom(300_000 + i * 1000) for i in range(8)}
    for name, data in files.items():
        put(served.outgoing, name, data)
    together = threading.Barrier(4, timeout=20)  # four transfers really in flight at once

    def fetch(item: tuple[int, str]) -> bytes:
        i, name = item
        together.wait()
        dest = tmp_path / f"{i}.download"
        remote.download(name, dest, len(files[name]))
        return dest.read_bytes()

    with served.connect() as remote, ThreadPoolExecutor(4) as pool:
        got = list(pool.map(fetch, enumerate(files)))
    assert got == list(files.values())


def test_missing_file_raises_remote_file_error_and_leaves_nothing(served, tmp_path):
    dest = tmp_path / "missing.download"
    with served.connect() as remote:
        with pytest.raises(RemoteFileError):
            remote.download("U1234567.Gone.20261101.20261101.xml.pgp", dest, 10)
        assert not dest.exists()
        put(served.outgoing, "after.xml", b"still usable")
        remote.download("after.xml", dest, 12)  # the session survives a missing file
        assert dest.read_bytes() == b"still usable"


@pytest.mark.parametrize("delta", [-1, 1])
def test_size_mismatch_raises_and_removes_dest(served, tmp_path, delta):
    put(served.outgoing, "grown.xml", b"0123456789" * 1000)
    dest = tmp_path / "grown.download"
    with served.connect() as remote:
        with pytest.raises(RemoteFileError):
            remote.download("grown.xml", dest, 10_000 + delta)
    assert not dest.exists()


def test_hostile_names_are_refused(served, tmp_path):
    with served.connect() as remote:
        for name in ("../etc/passwd", "a/b", "..", ""):
            with pytest.raises(RemoteFileError):
                remote.download(name, tmp_path / "x", 1)
            with pytest.raises(RemoteFileError):
                remote.delete(name)
    assert not (tmp_path / "x").exists()


def test_delete_removes_the_file_and_is_idempotent(served):
    put(served.outgoing, "done.xml.pgp", b"archived already")
    put(served.outgoing, "keep.xml.pgp", b"not yet")
    with served.connect() as remote:
        remote.delete("done.xml.pgp")
        assert [f.name for f in remote.list()] == ["keep.xml.pgp"]
        remote.delete("done.xml.pgp")  # already gone: nothing to do
    assert not (served.outgoing / "done.xml.pgp").exists()
    assert (served.outgoing / "keep.xml.pgp").exists()


def test_download_memory_is_bounded(served, tmp_path):
    # Twice the sFTP reads in flight (64 x 127 KiB, about 8 MB), so a loaded machine that lets
    # every pipelined answer arrive before it is written still stays far under the bound.
    size = 48 * 1024 * 1024
    put(served.outgoing, "large.xml.pgp", os.urandom(size))
    with served.connect() as remote:
        tracemalloc.start()
        try:
            remote.download("large.xml.pgp", tmp_path / "large", size)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert (tmp_path / "large").stat().st_size == size
    assert peak < size / 3, f"peak {peak} bytes: the download buffers the file in memory"


def test_file_growing_during_download_is_refused(served, tmp_path):
    size = 16 * 1024 * 1024  # far more than loopback socket buffers hold, so the growth is seen
    path = put(served.outgoing, "growing.xml.pgp", os.urandom(size))
    grown: list[int] = []

    def append_once(n: int) -> None:
        if not grown:
            with open(path, "ab") as fh:
                fh.write(b"late bytes")
        grown.append(n)

    with served.connect() as remote:
        with pytest.raises(RemoteFileError):
            remote.download("growing.xml.pgp", tmp_path / "g", size, append_once)
    assert not (tmp_path / "g").exists()
