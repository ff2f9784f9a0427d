"""What a server may put in a listing, and how much of it we read.

A listing entry with an impossible size or time is skipped and named (``Listing.skipped``),
never allowed to stop the rest; a listing that goes on without end stops with one clear
error at MAX_ENTRIES entries or MAX_BYTES bytes, so memory stays bounded.
"""

from __future__ import annotations

import logging
import math

from ..config import SourceConfig
from ..errors import RemoteFileError
from . import RemoteFile

log = logging.getLogger(__name__)

MAX_ENTRIES = 100_000  # IBKR keeps ~100 days of deliveries: a few thousand files at most
MAX_BYTES = 64 << 20  # raw listing bytes (names and facts) read from the server
MAX_MTIME = 253402300799.0  # 9999-12-31 23:59:59 UTC: later cannot be a delivery time
MAX_SIZE = 1 << 50  # 1 PiB: no statement is larger; a bigger size is a lie


class Listing(list):
    """``list[RemoteFile]`` plus the entries that were skipped, as ``(name, reason)``."""

    def __init__(self, files=(), skipped=()) -> None:
        super().__init__(files)
        self.skipped: list[tuple[str, str]] = list(skipped)


class Guard:
    """Counts a listing as it arrives; RemoteFileError once it exceeds the bounds."""

    def __init__(self, source: SourceConfig) -> None:
        self.source = source
        self.entries = 0
        self.bytes = 0

    def add(self, nbytes: int, entries: int = 0) -> None:
        self.bytes += nbytes
        self.entries += entries
        if self.entries > MAX_ENTRIES or self.bytes > MAX_BYTES:
            raise RemoteFileError(
                f"The listing of {self.source.settings.remote_dir!r} on {self.source.settings.host} exceeded "
                f"{MAX_ENTRIES} entries or {MAX_BYTES >> 20} MiB; reading stopped.",
                "The server sends a listing without end (broken or hostile): ask IBKR to check the folder; "
                "nothing was fetched from this source.",
            )


def problem(size: object, mtime: object) -> str | None:
    """Why an entry's size or time cannot be right, or None."""
    if not isinstance(size, int) or isinstance(size, bool):
        return f"size {size!r} is not a number"
    if size < 0 or size > MAX_SIZE:
        return f"size {size} is impossible"
    if not isinstance(mtime, (int, float)) or not math.isfinite(mtime) or not 0 <= mtime <= MAX_MTIME:
        return f"modification time {mtime!r} is impossible"
    return None


def entry(listing: Listing, source: SourceConfig, name: str, size: object, mtime: object) -> None:
    """Append ``RemoteFile(name, size, mtime)`` to ``listing``, or skip it with its reason."""
    why = problem(size, mtime)
    if why is None:
        listing.append(RemoteFile(name, int(size), float(mtime)))  # type: ignore[arg-type]
    else:
        skip(listing, source, name, why)


def skip(listing: Listing, source: SourceConfig, name: str, reason: str) -> None:
    listing.skipped.append((name, reason))
    log.warning("%s: skipped listing entry %r: %s", source.name, name[:120], reason)
