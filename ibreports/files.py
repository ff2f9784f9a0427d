"""Small file helpers shared by the pipeline, the archives and the key bundle."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class HashingWriter:
    """A write-only file wrapper that hashes what passes through: no second read of a download."""

    def __init__(self, raw) -> None:
        self._raw = raw
        self._digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        return self._raw.write(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def create_private(path: Path) -> int:
    """Open a new file for writing, 0600 from the first byte; fails if it exists."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def fsync_dir(folder: Path) -> None:
    """Make a new name in ``folder`` durable: a crash after a rename must not lose the file."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


LOCK_NAME = ".in-use"


def claim_workdir(prefix: str, base: Path | None = None) -> tuple[Path, int]:
    """A new private folder (0700) plus a lock held while this process uses it.

    A process killed with -9 cannot clean up; the lock (released by the kernel when
    the process dies) is how a later run tells an abandoned folder from a busy one.
    The descriptor is not inherited by child processes (gpg, gpg-agent).
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    # Locked under another name first: a sweeper that found LOCK_NAME unlocked for an instant
    # would take the folder of a run that is just starting.
    try:
        fd = os.open(path / (LOCK_NAME + ".new"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(path / (LOCK_NAME + ".new"), path / LOCK_NAME)
    except BaseException:
        release_workdir(path, fd)
        raise
    return path, fd


def release_workdir(path: Path, fd: int) -> None:
    """Remove a folder from claim_workdir, then drop its lock."""
    shutil.rmtree(path, ignore_errors=True)
    os.close(fd)


def sweep_abandoned(prefix: str, base: Path | None = None,
                    before_remove: Callable[[Path], None] | None = None) -> int:
    """Remove ``prefix*`` folders in ``base`` left by killed runs (their lock is free). Returns the count."""
    removed = 0
    for folder in Path(base or tempfile.gettempdir()).glob(prefix + "*"):
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:
            fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            # Between mkdtemp and the lock, a live run has no lock yet: only old folders go.
            if _age(folder) > 300:
                removed += _remove_tree(folder, before_remove)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live run holds it
        try:
            removed += _remove_tree(folder, before_remove)
        finally:
            os.close(fd)
    return removed


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _remove_tree(folder: Path, before_remove: Callable[[Path], None] | None) -> int:
    if before_remove is not None:
        before_remove(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return 1
