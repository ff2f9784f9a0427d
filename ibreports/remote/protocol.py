"""What every source kind's session is: the Remote protocol and the files it lists (a leaf module).

The registry and the kinds import these from here; :mod:`ibreports.remote` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol


Progress = Callable[[int], None]  # called with the number of bytes just received


@dataclass(frozen=True)
class RemoteFile:
    """A regular file in the remote folder, as listed. ``name`` is raw: validate before use."""

    name: str
    size: int
    mtime: float  # seconds since the epoch, UTC


class Remote(Protocol):
    """One logged-in session to a source. Thread-safe: ``download`` may run in parallel."""

    def list(self) -> list[RemoteFile]:
        """Regular files in the source's remote_dir (no folders, no links to folders)."""

    def download(self, name: str, dest: Path, expected_size: int, progress: Progress | None = None) -> str:
        """Stream ``name`` into ``dest`` (created 0600) and return its SHA-256 (hex), hashed on the way.

        RemoteFileError if the size differs (FileChangedError when the file is still changing)."""

    def delete(self, name: str) -> None:
        """Remove a remote file (only after it was archived and verified, and only when configured).

        Only kinds whose capabilities declare ``delete`` have it."""

    def close(self) -> None:
        """Close every connection."""

    def __enter__(self) -> "Remote": ...

    def __exit__(self, *exc: object) -> None: ...
