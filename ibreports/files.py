"""Small file helpers shared by the pipeline, the archives and the key bundle."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable

CHUNK = 1 << 20
log = logging.getLogger(__name__)


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
    """Open a new file for writing, 0600 from the first byte whatever the umask; fails if it exists
    (a symbolic link planted under that name included)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a umask such as 0o277 would otherwise leave it 0400
    except BaseException:
        os.close(fd)
        raise
    return fd


# --- a full disk -------------------------------------------------------------------------

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """An OSError saying the disk (or this user's quota on it) is full."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full(folder: Path, *, what: str, subject: str, needed: int | None, move: str, kept: str,
              code: int = errno.ENOSPC, at_least: bool = False):
    """The one DiskFullError of a full disk (``code`` ENOSPC, or EDQUOT: this user's quota): it names
    ``what`` (e.g. "the staging folder") at ``folder``, the file system it is on with its free space,
    what ``subject`` needs (``needed`` bytes, ``at_least`` when only a lower bound is known, None when
    unknown), how to ``move`` it to a larger disk, and what was ``kept`` (nothing is lost)."""
    from .errors import DiskFullError

    mount = _mount_point(folder)
    free = _free_bytes(folder)
    free_text = f"{_size_text(free, exact=False)} free" if free is not None else "free space unknown"
    bound = "at least " if at_least else ""
    need = f"needs {bound}{_size_text(needed)}" if needed is not None else "did not fit"
    full = "this user's disk quota is used up on" if code == errno.EDQUOT else "no space is left on"
    room = f"at least {_size_text(needed, exact=False)}" if needed is not None else "space"
    return DiskFullError(
        f"The disk is full ({os.strerror(code)}): {full} the file system {mount} ({free_text}) that holds "
        f"{what} {folder}, "
        f"and {subject} {need}.",
        f"Free {room} on {mount}{' (or raise the quota)' if code == errno.EDQUOT else ''}, or {move}, "
        f"then run again. Nothing was lost: {kept}",
    )


def _mount_point(path: Path) -> Path:
    where = Path(os.path.abspath(path))
    while not os.path.lexists(where) and where != where.parent:
        where = where.parent
    while not os.path.ismount(where) and where != where.parent:
        where = where.parent
    return where


def _free_bytes(path: Path) -> int | None:
    where = Path(os.path.abspath(path))
    while where != where.parent:
        try:
            info = os.statvfs(where)
            return info.f_bavail * info.f_frsize
        except OSError:
            where = where.parent
    return None


def _size_text(n: int, exact: bool = True) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            rounded = f"{n / scale:.1f} {unit}"
            return f"{rounded} ({n} bytes)" if exact else rounded
    return f"{n} bytes"


# --- folders other local users cannot reach --------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeEntry(Exception):
    """A path component we refuse to go through: a symbolic link, not a folder, or another user's."""

    def __init__(self, rel: str, why: str) -> None:
        super().__init__(f"{rel} {why}")
        self.rel = rel
        self.why = why


def make_private_dirs(folder: Path) -> None:
    """Create ``folder`` and its missing parents, each 0700 whatever the umask."""
    missing = []
    for level in [folder, *folder.parents]:
        if level.is_dir():
            break
        missing.append(level)
    for level in reversed(missing):
        try:
            level.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(level, 0o700)


def private_base(folder: Path, what: str, setting: str) -> None:
    """Make sure a base folder we keep private things in is not open to other local users.

    Created 0700 when missing. An existing folder that is ours and open to others is tightened to
    0700 (logged once: it stays private afterwards); one that belongs to another user is refused,
    since its owner could swap what we write for something else. A sticky folder (``/tmp``) is left
    as it is: others cannot rename or replace what we make in it.
    """
    from .errors import ConfigError

    make_private_dirs(folder)
    info = os.stat(folder)
    if info.st_mode & stat.S_ISVTX:  # a shared temporary folder such as /tmp: never ours to close
        return
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"The {what} {folder} belongs to another user (uid {info.st_uid}), who could replace what "
            "ibreports writes there.",
            f"Use a folder of your own for {setting}, or have it chowned to the user running ibreports.",
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        os.chmod(folder, 0o700)
        log.warning("the %s %s was mode %04o (open to other local users); it is now 0700", what, folder, mode)


def shared_temp_ok(folder: Path) -> None:
    """The system temporary folder may be shared, but only with the sticky bit (others cannot
    rename or replace our private folder in it)."""
    from .errors import ConfigError

    info = os.stat(folder)
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise ConfigError(
            f"The temporary folder {folder} is writable by other users and has no sticky bit: another "
            "user could replace the private staging folder made in it.",
            f"Set [run] staging_dir to a private folder, or run chmod +t {folder}.",
        )


def open_dir(path: Path) -> int:
    """A descriptor on the folder ``path`` (the configured path itself may be a link)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def descend(base_fd: int, parts: list[str], create: bool = False) -> int:
    """A descriptor on ``base/parts...``, reached without following a symbolic link and without
    entering a folder another user owns; missing folders are made 0700 when ``create``.

    Working from descriptors, not path names, nothing can swap a component for a link between
    the check and the use. Raises UnsafeEntry, FileNotFoundError (not ``create``) or OSError.
    """
    fd = os.dup(base_fd)
    done: list[str] = []
    try:
        for name in parts:
            done.append(name)
            made = False
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass
                nxt = _open_sub(fd, name, done)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeEntry("/".join(done), _what_is(fd, name)) from None
                raise
            os.close(fd)
            fd = nxt
            owner = os.fstat(fd).st_uid
            if owner != os.geteuid():
                raise UnsafeEntry("/".join(done), f"belongs to another user (uid {owner})")
            if made:
                os.fchmod(fd, 0o700)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_sub(fd: int, name: str, done: list[str]) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeEntry("/".join(done), _what_is(fd, name)) from None
        raise


def _what_is(fd: int, name: str) -> str:
    try:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError:
        return "is not a folder"
    return "is a symbolic link" if stat.S_ISLNK(info.st_mode) else "is not a folder"


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
    shared_temp_ok(Path(base or tempfile.gettempdir()))
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
    """Remove ``prefix*`` folders in ``base`` left by killed runs (their lock is free). Returns the count.

    ``base`` may be a shared temporary folder (``/tmp``): another local user can plant a folder
    under our prefix there. Only a real folder (never a symbolic link) that this user owns and
    that is 0700, as claim_workdir makes them, is ours to look into, stop and remove; everything
    else is left exactly as it is. Names are reached through a descriptor on ``base`` and
    checked on the descriptor, so a name cannot be swapped between the check and the removal
    (in a sticky folder nobody else can rename what we own).
    """
    folder_base = Path(base or tempfile.gettempdir())
    try:
        base_fd = open_dir(folder_base)
    except OSError:
        return 0
    removed = 0
    try:
        for name in sorted(os.listdir(base_fd)):
            if name.startswith(prefix):
                removed += _sweep_one(base_fd, folder_base / name, name, before_remove)
    finally:
        os.close(base_fd)
    return removed


def own_private_dir(info: os.stat_result) -> bool:
    """A folder of this user that nobody else can enter or change (mode exactly 0700)."""
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
            and stat.S_IMODE(info.st_mode) == 0o700)


def _sweep_one(base_fd: int, folder: Path, name: str, before_remove: Callable[[Path], None] | None) -> int:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=base_fd)  # a symbolic link or a file: ELOOP / ENOTDIR
    except OSError:
        return 0
    try:
        info = os.fstat(fd)
        if not own_private_dir(info):
            return 0  # another user's, or not made by claim_workdir: not ours to touch
        try:
            lock = os.open(LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
        except FileNotFoundError:
            # Between mkdtemp and the lock, a live run has no lock yet: only old folders go.
            if time.time() - info.st_mtime > 300:
                return _remove_tree(base_fd, folder, name, info, before_remove)
            return 0
        except OSError:
            return 0
        try:
            if not stat.S_ISREG(os.fstat(lock).st_mode):
                return 0
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: a live run holds it
            os.close(lock)
            return 0
        try:
            return _remove_tree(base_fd, folder, name, info, before_remove)
        finally:
            os.close(lock)
    finally:
        os.close(fd)


def _remove_tree(base_fd: int, folder: Path, name: str, info: os.stat_result,
                 before_remove: Callable[[Path], None] | None) -> int:
    if not _still(base_fd, name, info):
        return 0
    if before_remove is not None:
        before_remove(folder)
    if _still(base_fd, name, info):
        # By descriptor (Python's fd-based rmtree): a link inside is removed, never followed.
        shutil.rmtree(name, dir_fd=base_fd, ignore_errors=True)
    try:
        os.stat(name, dir_fd=base_fd, follow_symlinks=False)
    except FileNotFoundError:
        return 1
    except OSError:
        pass
    # Counted only when really gone: never "removed" again at every run.
    log.warning("could not remove %s, left by an interrupted run; remove it by hand", folder)
    return 0


def _still(base_fd: int, name: str, info: os.stat_result) -> bool:
    """``name`` in the base is still the folder we checked (not replaced meanwhile)."""
    try:
        return os.path.samestat(os.stat(name, dir_fd=base_fd, follow_symlinks=False), info)
    except OSError:
        return False
