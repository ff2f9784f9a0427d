"""One contract for every registered remote kind (rclone-style fstests).

The suite iterates over the registry: every kind that lists files (``Capabilities.listing``)
runs every test here, against each server variant in ``SERVERS`` (real OpenSSH sshd and
pyftpdlib on loopback; the toy in-memory kind that tests/memory_remote.py registers). A kind
registered without a server here fails ``test_every_listing_kind_has_a_server``. Tests of an
optional capability (``delete``) run where the kind declares it.
"""

from __future__ import annotations

import hashlib

import calendar
import os
import secrets
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import pytest

from ibreports.errors import RemoteFileError
from ibreports.remote import Remote, open_remote
from ibreports.remote.registry import SourceKind, get_kind, known_kinds
from tests import memory_remote  # registers the toy kind "memory": a test's own kind joins by registering
from tests.fixtures.ftp import ftp_source
from tests.fixtures.sshd import sftp_source
from tests.helpers import source_config

MTIME = calendar.timegm((2026, 11, 2, 3, 4, 5))  # an old, exact second


class Folder(Protocol):
    """The served folder, as the test puts files there (on disk or in memory)."""

    def put(self, name: str, data: bytes, mtime: float = MTIME) -> None: ...
    def append(self, name: str, data: bytes) -> None: ...
    def exists(self, name: str) -> bool: ...
    def add_folder_and_link(self, name: str, link: str) -> None: ...


class DiskFolder:
    def __init__(self, path: Path) -> None:
        self.path = path

    def put(self, name: str, data: bytes, mtime: float = MTIME) -> None:
        (self.path / name).write_bytes(data)
        os.utime(self.path / name, (mtime, mtime))

    def append(self, name: str, data: bytes) -> None:
        with open(self.path / name, "ab") as fh:
            fh.write(data)

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    def add_folder_and_link(self, name: str, link: str) -> None:
        (self.path / name).mkdir()
        (self.path / name / "inner.xml").write_bytes(b"x")
        os.symlink(self.path / name, self.path / link)


class MemoryFolder:
    def __init__(self, server: memory_remote.MemoryServer) -> None:
        self.server = server

    def put(self, name: str, data: bytes, mtime: float = MTIME) -> None:
        self.server.files[name] = memory_remote.Stored(bytearray(data), mtime)

    def append(self, name: str, data: bytes) -> None:
        self.server.files[name].data.extend(data)

    def exists(self, name: str) -> bool:
        return name in self.server.files

    def add_folder_and_link(self, name: str, link: str) -> None:
        self.server.others.update((name, link))


@dataclass
class Served:
    """A running server, the folder it serves and a way to log in to it."""

    kind: SourceKind
    folder: Folder
    connect: Callable[[], Remote]


def _sftp(request) -> Served:
    key = request.getfixturevalue("sftp_client_key")
    server = request.getfixturevalue("sshd_factory")([key[1]])
    source = sftp_source(server, key)
    return Served(get_kind("sftp"), DiskFolder(server.root / "outgoing"), lambda: open_remote(source))


def _ftp(tls: bool, mlsd: bool) -> Callable:
    def start(request) -> Served:
        server = request.getfixturevalue("ftp_factory")(tls=tls, mlsd=mlsd)
        source = ftp_source(server)
        return Served(get_kind("ftp"), DiskFolder(server.root / "outgoing"), lambda: open_remote(source))
    return start


def _memory(request) -> Served:
    store = secrets.token_hex(4)
    memory_remote.SERVERS[store] = server = memory_remote.MemoryServer()
    request.addfinalizer(lambda: memory_remote.SERVERS.pop(store))
    source = source_config("memory", name="toy", store=store, settle_seconds=0)
    return Served(get_kind("memory"), MemoryFolder(server), lambda: open_remote(source))


# Server variants per kind: a new kind adds its entry here (and registers itself, in the library or a test).
SERVERS: dict[str, dict[str, Callable]] = {
    "sftp": {"sftp": _sftp},
    "ftp": {"ftp": _ftp(False, True), "ftp-nomlsd": _ftp(False, False), "ftps": _ftp(True, True)},
    "memory": {"memory": _memory},
}
LISTING = [k for k in known_kinds() if get_kind(k).capabilities.listing]
VARIANTS = [(kind, variant) for kind in LISTING for variant in SERVERS.get(kind, {})]


def test_every_listing_kind_has_a_server():
    assert LISTING and set(LISTING) <= set(SERVERS), f"no contract server for {sorted(set(LISTING) - set(SERVERS))}"


@pytest.fixture(params=VARIANTS, ids=[v for _, v in VARIANTS])
def served(request) -> Served:
    kind, variant = request.param
    return SERVERS[kind][variant](request)


@pytest.fixture(params=[v for v in VARIANTS if get_kind(v[0]).capabilities.delete],
                ids=[v for k, v in VARIANTS if get_kind(k).capabilities.delete])
def deletable(request) -> Served:
    kind, variant = request.param
    return SERVERS[kind][variant](request)


@pytest.fixture(scope="module")
def payloads() -> dict[str, bytes]:
    return {
        "U1234567.Empty.20261101.20261101.xml.pgp": b"",
        "U1234567.Small.20261101.20261101.xml": b"<FlexQueryResponse/>\n",
        "U1234567.Big.20261101.20261101.xml.pgp": os.urandom(3 * 1024 * 1024 + 17),
    }


def test_list_shows_regular_files_with_size_and_mtime(served, payloads):
    for name, data in payloads.items():
        served.folder.put(name, data)
    served.folder.add_folder_and_link("subfolder", "link-to-folder")
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
        served.folder.put(name, data)
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
        served.folder.put(name, data)
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
        served.folder.put("after.xml", b"still usable")
        remote.download("after.xml", dest, 12)  # the session survives a missing file
        assert dest.read_bytes() == b"still usable"


@pytest.mark.parametrize("delta", [-1, 1])
def test_size_mismatch_raises_and_removes_dest(served, tmp_path, delta):
    served.folder.put("grown.xml", b"0123456789" * 1000)
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
    assert not (tmp_path / "x").exists()


def test_hostile_names_are_refused_for_delete(deletable):
    with deletable.connect() as remote:
        for name in ("../etc/passwd", "a/b", "..", ""):
            with pytest.raises(RemoteFileError):
                remote.delete(name)


def test_delete_removes_the_file_and_is_idempotent(deletable):
    deletable.folder.put("done.xml.pgp", b"archived already")
    deletable.folder.put("keep.xml.pgp", b"not yet")
    with deletable.connect() as remote:
        remote.delete("done.xml.pgp")
        assert [f.name for f in remote.list()] == ["keep.xml.pgp"]
        remote.delete("done.xml.pgp")  # already gone: nothing to do
    assert not deletable.folder.exists("done.xml.pgp")
    assert deletable.folder.exists("keep.xml.pgp")


def test_download_memory_is_bounded(served, tmp_path):
    # Twice the sFTP reads in flight (64 x 127 KiB, about 8 MB), so a loaded machine that lets
    # every pipelined answer arrive before it is written still stays far under the bound.
    size = 48 * 1024 * 1024
    served.folder.put("large.xml.pgp", os.urandom(size))
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
    served.folder.put("growing.xml.pgp", os.urandom(size))
    grown: list[int] = []

    def append_once(n: int) -> None:
        if not grown:
            served.folder.append("growing.xml.pgp", b"late bytes")
        grown.append(n)

    with served.connect() as remote:
        with pytest.raises(RemoteFileError):
            remote.download("growing.xml.pgp", tmp_path / "g", size, append_once)
    assert not (tmp_path / "g").exists()
