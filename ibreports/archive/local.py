"""A local folder as the archive: atomic, never-overwriting writes, one walk to list.

put() writes a temporary file in the root, verifies its SHA-256, fsyncs it, then
hard-links it to the final name (same file system, so atomic). ``link`` fails if the name exists, so a
put is create-if-absent even against concurrent writers, and a reader only ever
sees complete files. No sidecar files: the inventory stays a single walk.

Each temporary file is flock-ed by its writer until it is gone. The kernel drops the lock when
the process dies (even by kill -9), so the next inventory removes exactly the temporary files of
dead runs and never one a live run (another process included) is still writing.

Folders are 0700 and files 0600 whatever the umask. Writes go through folder descriptors
(openat-style): never through a symbolic link, never into a folder another user owns, and the
inventory does not count what another user planted, so a forged statement never passes for an
archived one.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import stat
from pathlib import Path

from ..config import ArchiveConfig
from ..errors import ArchiveConfigError, ArchiveError
from ..files import (
    CHUNK, UnsafeEntry, create_private, descend, disk_full, is_disk_full, open_dir, private_base, sha256_file,
)
from .objects import ObjectInfo, validate_key

SHA256_XATTR = "user.ibreports.sha256"  # the content's SHA-256 (hex), recorded when the object is written
READ_ONLY_MODE = 0o400  # archived statements and originals: nothing rewrites them
TMP_PREFIX = ".tmp-"  # reserved in the root only: keys always start with a folder (statements/, runs/, ...)
FILE_MODE = 0o600  # statements, encrypted originals and run records alike
log = logging.getLogger(__name__)


class LocalArchive:
    """Archive objects as files under ``Path(config.url)``."""

    features: frozenset[str] = frozenset()  # a local folder has no write-once retention

    def __init__(self, config: ArchiveConfig) -> None:
        self.root = Path(config.url)
        self.description = str(self.root)
        self.not_counted: dict[str, str] = {}  # key -> why the last inventory left it out
        if self.root.exists() and not self.root.is_dir():
            raise ArchiveConfigError(f"The archive path {self.root} is not a folder.", "Fix archive.url.")
        try:
            private_base(self.root, "archive folder", "archive.url")
        except OSError as exc:
            raise _error(exc, f"create the archive folder {self.root}") from None

    def inventory(self, folder: str = "") -> dict[str, ObjectInfo]:
        """Every regular file under the root (or ``folder``), keyed by its '/'-separated relative path."""
        found: dict[str, ObjectInfo] = {}
        start = folder.strip("/")
        top = self._path(start) if start else self.root
        if start and (top.is_symlink() or not top.is_dir()):
            return found
        stack = [(top, start + "/" if start else "")]
        me, foreign, links = os.geteuid(), [], []
        try:
            while stack:
                folder, prefix = stack.pop()
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if not prefix and entry.name.startswith(TMP_PREFIX):
                            _remove_if_dead(entry.path)  # an in-flight put, or one a killed run left
                            continue
                        key = prefix + entry.name
                        if entry.is_symlink():
                            links.append(key)
                            continue  # never followed, never counted
                        info = entry.stat(follow_symlinks=False)
                        if info.st_uid != me:  # planted by another local user: not ours to trust
                            foreign.append(key)
                        elif entry.is_dir(follow_symlinks=False):
                            stack.append((Path(entry.path), key + "/"))
                        elif entry.is_file(follow_symlinks=False):
                            found[key] = ObjectInfo(key, info.st_size)
        except OSError as exc:
            raise _error(exc, f"list the archive folder {self.root}") from None
        self.not_counted = {**{k: "is a symbolic link" for k in links},
                            **{k: "belongs to another user" for k in foreign}}  # verify names them
        if foreign:
            log.warning("%d item(s) in the archive folder %s belong to another user and are not counted as "
                        "archived (they may have been planted): %s", len(foreign), self.root,
                        ", ".join(sorted(foreign)[:5]) + (", ..." if len(foreign) > 5 else ""))
        return found

    def put(self, key: str, path: Path, sha256: str | None, metadata: dict[str, str], private: bool = False) -> bool:
        """Create ``key`` from ``path`` unless it exists, read-only (0400), with its SHA-256 as an
        extended attribute (other metadata is not kept locally)."""
        self._check_key(key)
        tmp, fd, parent = None, -1, -1
        try:
            size = os.path.getsize(path)
            tmp, fd, copy = self._temp(path, FILE_MODE)
            if copy:
                with open(path, "rb") as src:
                    while chunk := src.read(CHUNK):
                        _write_all(fd, chunk)
            actual = sha256_file(tmp)  # what is in the archive
            if sha256 is not None and actual != sha256.lower():
                raise ArchiveError(
                    f"Refused to archive {key}: its SHA-256 does not match the verified download.",
                    "The staged file changed or was corrupted; run fetch again.",
                )
            record_sha256(fd, actual)
            # Read-only from birth: nothing rewrites an archived object (--force compares, never writes).
            os.fchmod(fd, READ_ONLY_MODE)
            os.fsync(fd)
            parent, name = self._parent(key, create=True)  # only now: a refused put leaves no empty folders
            try:
                os.link(tmp, name, dst_dir_fd=parent, follow_symlinks=False)
            except FileExistsError:
                self._existing(parent, name, key)
                return False
            os.fsync(parent)
            return True
        except OSError as exc:
            if is_disk_full(exc):
                raise self._full(exc, key, size) from None
            raise _error(exc, f"write {key} to {self.root}") from None
        finally:
            _release(tmp, fd)
            _close(parent)

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None, retain: bool = True) -> None:
        """Write ``data`` to ``key`` atomically, replacing any existing object."""
        self._check_key(key)
        tmp, fd, parent = None, -1, -1
        try:
            tmp, fd, _ = self._temp(None, FILE_MODE)
            _write_all(fd, data)
            os.fsync(fd)
            parent, name = self._parent(key, create=True)
            os.replace(tmp, name, dst_dir_fd=parent)  # a rename replaces a link, never writes through it
            tmp = None
            os.fsync(parent)
        except OSError as exc:
            if is_disk_full(exc):
                raise self._full(exc, key, len(data)) from None
            raise _error(exc, f"write {key} to {self.root}") from None
        finally:
            _release(tmp, fd)
            _close(parent)

    def get(self, key: str, dest: Path) -> None:
        """Copy ``key`` into a new file ``dest``, created 0600."""
        self._check_key(key)
        parent = -1
        try:
            parent, name = self._parent(key, create=False)
            src_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            if os.fstat(src_fd).st_uid != os.geteuid():
                os.close(src_fd)
                raise _unsafe(key, UnsafeEntry(key, "belongs to another user"))
            size = os.fstat(src_fd).st_size
            src = os.fdopen(src_fd, "rb")
        except FileNotFoundError:
            raise ArchiveError(f"{key} is not in the archive {self.root}.", "Check the key, or run fetch.") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _unsafe(key, UnsafeEntry(key, "is a symbolic link")) from None
            raise _error(exc, f"read {key} from {self.root}") from None
        finally:
            _close(parent)
        created = False
        try:
            with src:
                fd = create_private(dest)
                created = True
                try:
                    while chunk := src.read(CHUNK):
                        _write_all(fd, chunk)
                finally:
                    os.close(fd)
        except OSError as exc:
            if created:
                _remove(dest)
            if is_disk_full(exc):
                raise copy_full(exc, key, dest, size) from None
            raise _error(exc, f"copy {key} to {dest}") from None

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        self._check_key(key)
        parent = -1
        try:
            parent, name = self._parent(key, create=False)
            os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _error(exc, f"delete {key} from {self.root}") from None
        finally:
            _close(parent)

    def _full(self, exc: OSError, key: str, size: int):
        return disk_full(self.root, what="the archive folder", subject=key, needed=size, code=exc.errno,
                         move="move archive.url to a larger disk",
                         kept="no partial object was written, the file stays on the server (it is not deleted "
                              "before it is archived), and the next run archives it.")

    def _path(self, key: str) -> Path:
        """The path of ``key`` under the root (for reading a folder; writes go through _parent)."""
        self._check_key(key)
        return self.root.joinpath(*key.split("/"))

    def _check_key(self, key: str) -> None:
        validate_key(key)
        if key.startswith(TMP_PREFIX):
            raise ArchiveError(f"Refused archive key {key!r}: top-level names starting with {TMP_PREFIX} are "
                               "reserved.", "")

    def _parent(self, key: str, create: bool) -> tuple[int, str]:
        """A descriptor on the folder of ``key`` and the key's last name, reached through real
        folders of ours only (made 0700 when ``create``): never through a link."""
        *folders, name = key.split("/")
        root = open_dir(self.root)
        try:
            return descend(root, folders, create), name
        except UnsafeEntry as exc:
            raise _unsafe(key, exc) from None
        finally:
            os.close(root)

    def _existing(self, parent: int, name: str, key: str) -> None:
        """``key`` exists already: fine when it is a file of ours, refused loudly otherwise."""
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            raise _unsafe(key, UnsafeEntry(key, "is a symbolic link"))
        if not stat.S_ISREG(info.st_mode):
            raise ArchiveError(f"Cannot archive {key}: a folder or special file has that name.",
                               f"Move it out of {self.root}.")
        if info.st_uid != os.geteuid():
            raise _unsafe(key, UnsafeEntry(key, f"belongs to another user (uid {info.st_uid})"))

    def _temp(self, source: Path | None, mode: int) -> tuple[Path, int, bool]:
        """A new temporary file in the root (same file system as every key, so link/replace are atomic),
        locked by this process: (path, locked descriptor, True if the caller must still copy into it).

        ``source`` is taken over (hard-linked) when possible. A sweeper may remove the name in the
        moment before the lock is taken: then try a fresh name.
        """
        for _ in range(5):
            tmp = self.root / f"{TMP_PREFIX}{secrets.token_hex(8)}"
            copy = source is None or not _take_over(source, tmp, mode)
            try:
                flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL) if copy else (os.O_RDONLY | os.O_NOFOLLOW)
                fd = os.open(tmp, flags, mode)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a sweeper checks it
                if _same_file(tmp, fd):  # the linked inode gets its mode only once it is ours for good
                    os.fchmod(fd, mode)  # exactly 0600 whatever the umask
                    return tmp, fd, copy
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            os.close(fd)
        raise ArchiveError(f"Could not create a temporary file in {self.root}: it kept disappearing.",
                           "Check what else removes files in the archive folder.")


def record_sha256(fd: int, sha256: str) -> None:
    """Keep the SHA-256 with the file (an extended attribute: no sidecar, so listing stays one walk).

    File systems without user extended attributes keep none; ``verify`` then reports the
    object as unrecorded instead of checked.
    """
    try:
        os.setxattr(fd, SHA256_XATTR, sha256.encode("ascii"))
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
            raise


def recorded_sha256(path: Path | str) -> str | None:
    """The SHA-256 recorded when ``path`` was archived, or None."""
    try:
        return os.getxattr(path, SHA256_XATTR).decode("ascii", "replace")
    except OSError:
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _take_over(path: Path, tmp: Path, mode: int) -> bool:
    """Hard-link a staged file into the archive instead of copying it (same file system only).

    The pipeline hands over files it will only delete afterwards, so sharing the inode is
    safe, and it saves writing every byte a second time. False: copy instead.
    """
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:  # never share an inode twice
            return False
        os.link(path, tmp, follow_symlinks=False)
    except OSError:  # another file system (EXDEV), no hard links here, ...
        return False
    return True  # its mode is set once the lock is held (_temp): a sweeper may take the name before


def _same_file(path: Path | str, fd: int) -> bool:
    try:
        return os.path.samestat(os.lstat(path), os.fstat(fd))
    except FileNotFoundError:
        return False


def _remove_if_dead(path: str) -> None:
    """Remove a temporary file of ours nobody holds a lock on: its put died with its process."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return  # gone meanwhile, or a symbolic link: not ours
    try:
        info = os.fstat(fd)
        # Ours only: in a shared (sticky) root another user's file is theirs, even to root.
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a live put holds it
            if _same_file(path, fd):
                os.unlink(path)
    except OSError:
        pass  # best effort; inventory ignores temporary files anyway
    finally:
        os.close(fd)


def _unsafe(key: str, exc: UnsafeEntry) -> ArchiveError:
    return ArchiveError(
        f"Refused archive key {key!r}: {exc.rel} in the archive folder {exc.why}; nothing is written "
        "through a link (it could lead outside the archive folder) or into what another user planted.",
        "Check how it got there, move it out of the archive folder, and run again.",
    )


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def _release(tmp: Path | None, fd: int) -> None:
    """Remove a temporary file (if still there), then drop its lock."""
    if tmp is not None:
        _remove(tmp)
    if fd >= 0:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # best effort: the original error is the one worth reporting


def copy_full(exc: OSError, key: str, dest: Path, size: int):
    """Reading an archived object into a local file that does not fit (the staging disk)."""
    return disk_full(dest.parent, what="the folder", subject=f"the copy of {key}", needed=size, code=exc.errno,
                     move="set [run] staging_dir to a folder on a larger disk",
                     kept="the archived object is unchanged and no partial copy was kept.")


def _error(exc: OSError, action: str) -> ArchiveError:
    """An OSError as one sentence with the remedy that fits its cause; a folder that refuses writes
    (permissions, read-only file system) is a configuration error: no other file would fare better."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ArchiveConfigError(f"Could not {action}: {reason}.",
                                  "Give the user running ibreports write access to the archive folder, "
                                  "or change archive.url.")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        remedy = "Free disk space on the archive's file system, or move archive.url to a larger disk."
    elif exc.errno == errno.ENAMETOOLONG:
        remedy = "The file name is too long for this file system; use a file system with longer names."
    else:
        remedy = "Check the archive folder and its file system."
    return ArchiveError(f"Could not {action}: {reason}.", remedy)
