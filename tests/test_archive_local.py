"""Local-folder-only behaviour: file modes, temp files, refused writes, symlinks."""

from __future__ import annotations

import fcntl
import hashlib
import os
import resource
import shutil
import signal
import stat
import tempfile
from pathlib import Path
from typing import Callable

import pytest

from ibreports.archive import ObjectInfo
from ibreports.archive.local import LocalArchive
from ibreports.config import ArchiveConfig
from ibreports.errors import ArchiveError

NOBODY = 65534


def _archive(root: Path) -> LocalArchive:
    return LocalArchive(ArchiveConfig(url=str(root)))


def _staged(folder: Path, data: bytes, name: str = "staged") -> tuple[Path, str]:
    path = folder / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _tree(folder: Path) -> set:
    return {(str(p.relative_to(folder)), p.stat().st_size if p.is_file() else -1) for p in folder.rglob("*")}


def _in_child(fn: Callable[[], None], unprivileged: bool = False) -> str:
    """Run ``fn`` in a forked child (optionally as nobody, so permissions bind even for root).

    Returns the ArchiveError text the child raised, or "" if it raised nothing.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            os.close(read)
            if unprivileged and os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            fn()
        except ArchiveError as exc:
            os.write(write, str(exc).encode() or b"?")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent as a failure
            os.write(write, f"UNEXPECTED {type(exc).__name__}: {exc}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        text = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, text
    return text


@pytest.fixture
def shared_dir():
    """A folder user nobody can reach (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="ibreports-local-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


def test_root_is_created_private(tmp_path):
    root = tmp_path / "deep" / "archive"
    archive = _archive(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert archive.description == str(root)
    assert archive.inventory() == {}


def test_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArchiveError, match="not a folder"):
        _archive(tmp_path / "file")


def test_every_file_is_0600(tmp_path):
    archive = _archive(tmp_path / "archive")
    path, sha = _staged(tmp_path, b"plaintext statement")
    archive.put("statements/plain.xml", path, sha, {}, private=True)
    archive.put("originals/enc.xml.pgp", path, sha, {}, private=False)
    archive.put_bytes("runs/r.json", b"{}")
    root = tmp_path / "archive"
    assert stat.S_IMODE((root / "statements/plain.xml").stat().st_mode) == 0o400
    assert stat.S_IMODE((root / "originals/enc.xml.pgp").stat().st_mode) == 0o400
    assert stat.S_IMODE((root / "runs/r.json").stat().st_mode) == 0o600


def test_inventory_ignores_temp_files_symlinks_and_folders(tmp_path):
    root = tmp_path / "archive"
    archive = _archive(root)
    path, sha = _staged(tmp_path, b"12345")
    archive.put("a/b/c.xml", path, sha, {})
    (root / ".tmp-0123abcd").write_bytes(b"interrupted put")
    (root / "a" / "link.xml").symlink_to(path)
    (root / "empty").mkdir()
    assert archive.inventory() == {"a/b/c.xml": ObjectInfo("a/b/c.xml", 5)}
    assert not (root / ".tmp-0123abcd").exists()  # nobody held its lock: a dead run's, swept
    with pytest.raises(ArchiveError, match="reserved"):
        archive.put(".tmp-x", path, sha, {})
    assert archive.put("a/.tmp-x", path, sha, {})  # reserved in the root only: deeper, an ordinary name
    assert "a/.tmp-x" in archive.inventory()


def test_temp_file_of_a_live_put_survives_the_sweep(tmp_path):
    root = tmp_path / "archive"
    archive = _archive(root)
    live = root / ".tmp-live"
    fd = os.open(live, os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a put in another live process holds
    try:
        assert archive.inventory() == {} and live.exists()
    finally:
        os.close(fd)
    archive.inventory()
    assert not live.exists()


def test_no_temp_file_survives_a_put(tmp_path):
    root = tmp_path / "archive"
    archive = _archive(root)
    path, sha = _staged(tmp_path, b"x" * 100)
    archive.put("k/x", path, sha, {})
    archive.put("k/x", path, sha, {})
    archive.put_bytes("k/y", b"y")
    assert sorted(p.name for p in root.rglob("*")) == ["k", "x", "y"]


def test_read_only_archive_folder_is_refused_and_left_untouched(shared_dir):
    root = shared_dir / "archive"
    archive = _archive(root)
    path, sha = _staged(shared_dir, b"statement")
    path.chmod(0o644)
    root.chmod(0o555)
    before = _tree(shared_dir)
    try:
        message = _in_child(lambda: archive.put("statements/a.xml", path, sha, {}), unprivileged=True)
        assert "Permission denied" in message and "write access" in message
        message = _in_child(lambda: archive.put_bytes("runs/r.json", b"{}"), unprivileged=True)
        assert "write access" in message
        assert _tree(shared_dir) == before
    finally:
        root.chmod(0o700)


def test_read_only_subfolder_is_refused_and_the_temp_file_removed(shared_dir):
    root = shared_dir / "archive"
    archive = _archive(root)
    if os.geteuid() == 0:
        os.chown(root, NOBODY, NOBODY)  # the child may write the root, not the sub-folder
    (root / "statements").mkdir()
    if os.geteuid() == 0:
        os.chown(root / "statements", NOBODY, NOBODY)  # the child's own folder, read-only
    (root / "statements").chmod(0o555)
    path, sha = _staged(shared_dir, b"statement")
    path.chmod(0o644)
    before = _tree(shared_dir)
    try:
        message = _in_child(lambda: archive.put("statements/a.xml", path, sha, {}), unprivileged=True)
        assert "write access" in message
        assert _tree(shared_dir) == before  # the temp file in the root was removed
    finally:
        (root / "statements").chmod(0o700)


def test_write_failing_midway_leaves_nothing(tmp_path):
    root = tmp_path / "archive"
    archive = _archive(root)
    path, sha = _staged(tmp_path, os.urandom(3 * 1024 * 1024))
    os.link(path, tmp_path / "second-name")  # a second name forces the copy path (no inode is shared twice)
    before = _tree(tmp_path)

    def put_with_small_disk() -> None:  # RLIMIT_FSIZE makes write() fail like a full disk would
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, 1024 * 1024))
        archive.put("big/report.zip", path, sha, {})

    message = _in_child(put_with_small_disk)
    assert message.startswith("Could not write big/report.zip") and "too large" in message
    assert _tree(tmp_path) == before


def test_symlink_leading_outside_is_refused(tmp_path):
    root = tmp_path / "archive"
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = _archive(root)
    (root / "sub").symlink_to(outside)
    path, sha = _staged(tmp_path, b"x")
    for call in (lambda: archive.put("sub/x", path, sha, {}), lambda: archive.put("sub/deeper/x", path, sha, {}),
                 lambda: archive.put_bytes("sub/x", b"x"), lambda: archive.get("sub/x", tmp_path / "dest")):
        with pytest.raises(ArchiveError, match="outside the archive folder"):
            call()
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "dest").exists()


def test_key_naming_a_folder_is_an_error_not_already_archived(tmp_path):
    archive = _archive(tmp_path / "archive")
    path, sha = _staged(tmp_path, b"x")
    archive.put("a/b", path, sha, {})
    with pytest.raises(ArchiveError, match="a folder"):
        archive.put("a", path, sha, {})
    with pytest.raises(ArchiveError):
        archive.put("a/b/c", path, sha, {})  # "a/b" is a file


def test_a_staged_file_is_taken_over_not_copied_and_never_shared_twice(tmp_path):
    root = tmp_path / "archive"
    archive = _archive(root)
    path, sha = _staged(tmp_path, b"<statement/>" * 1000)
    assert archive.put("statements/a.xml", path, sha, {}, private=True)
    assert (root / "statements/a.xml").stat().st_ino == path.stat().st_ino  # same file system: a hard link
    assert archive.put("encrypted/a.xml", path, sha, {})  # already archived once: copied
    assert (root / "encrypted/a.xml").stat().st_ino != path.stat().st_ino
    assert (root / "statements/a.xml").stat().st_mode & 0o777 == 0o400
    assert (root / "encrypted/a.xml").stat().st_mode & 0o777 == 0o400
