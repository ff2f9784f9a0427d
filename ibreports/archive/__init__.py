"""Archives (local folder, S3-compatible) behind one interface: inventory, put, get."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..config import ArchiveConfig
from ..errors import ConfigError
from .objects import MAX_KEY_BYTES, ObjectInfo, validate_key  # noqa: F401 - re-exported

# Optional archive features, by name. An archive declares the ones it has in ``features``;
# callers and the archive contract suite go by the declaration, never by the archive's type.
# A new feature is named here, declared by the archives that have it, and tested where declared.
FEATURES: dict[str, str] = {
    "object_lock": "write-once retention: the store refuses to delete or overwrite a statement before a date",
}


class Archive(Protocol):
    """Keys are '/'-separated relative paths, e.g. ``statements/U1234567/2026/11/x.xml``."""

    description: str  # e.g. "/srv/archive" or "s3://bucket/prefix" (no credentials)
    features: frozenset[str]  # names from FEATURES this archive has

    def inventory(self, folder: str = "") -> dict[str, ObjectInfo]:
        """Every object under the archive (or under ``folder``, e.g. ``runs/``), listed once
        (paginated; never a request per object). Keys are always relative to the archive."""

    def put(self, key: str, path: Path, sha256: str | None, metadata: dict[str, str], private: bool = False) -> bool:
        """Create ``key`` from ``path`` unless it exists. True if written, False if it already existed.

        The write is atomic (temporary name then rename, or a single verified PUT): a
        reader never sees a partial object. ``sha256`` (hex) is verified by the store; None when
        the caller has no independent hash (a file it just produced): S3 then computes one for
        ``ChecksumSHA256``, a local archive writes it as it is.
        ``private`` marks plaintext statements (local: every put object is 0400, read-only from birth).
        The content's SHA-256 is recorded with the object (S3 metadata ``sha256``, local extended
        attribute ``user.ibreports.sha256``) for ``ibreports verify``; with ``[archive] object_lock``
        an S3 object is written under that retention. The archive may take ``path``
        over (a local archive on the same file system hard-links it): the caller must not
        modify the file afterwards, only delete it.
        """

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None, retain: bool = True) -> None:
        """Write a small object (run records, probes), replacing any existing one. ``retain=False``
        leaves out ``[archive] object_lock`` retention (doctor's probe)."""

    def get(self, key: str, dest: Path) -> None:
        """Stream ``key`` into ``dest`` (created 0600); ArchiveError if missing."""

    def delete(self, key: str) -> None:
        """Remove ``key`` (used by doctor's probe only)."""


def archive_class(config: ArchiveConfig) -> type:
    """The archive class for ``config.url``, once the features the configuration asks for are
    known to be declared by it (ConfigError, exit 2, otherwise)."""
    if config.is_s3:
        from .s3 import S3Archive as cls
    else:
        from .local import LocalArchive as cls
    if config.object_lock is not None and "object_lock" not in cls.features:
        raise ConfigError(
            f"archive.object_lock is unsupported by the archive {config.url}: only S3 Object Lock "
            "gives write-once retention.",
            "Remove object_lock from [archive], or archive to an s3:// bucket with Object Lock enabled "
            "(a local folder: see the chattr +i recipe in docs/coverage.md).",
        )
    return cls


def open_archive(config: ArchiveConfig, quick: bool = False) -> Archive:
    """The archive for ``config.url``: a local folder or ``s3://bucket/prefix``.

    ``quick``: give up early on a store that does not answer (doctor), instead of retrying."""
    cls = archive_class(config)
    return cls(config, quick=quick) if config.is_s3 else cls(config)
