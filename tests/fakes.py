"""A remote without a server: serves a folder on this machine through the Remote contract.

``FolderRemote`` passes the same contract suite as sFTP and FTP (tests/test_remote_contract.py),
so pipeline decision tables (settle, purge horizon, plain/encrypted twins, conflicts, since/until,
on-demand sources) run in milliseconds beside the real-server tests. ``OnDemandRemote`` is a toy
on-demand source (no listing: it produces statements into staging, like the Flex Web Service).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Iterator

from ibreports.errors import FileChangedError, RemoteFileError
from ibreports.files import create_private
from ibreports.remote import RemoteFile

CHUNK = 256 * 1024


class FolderRemote:
    """The files of ``folder`` as a remote: regular files only, streamed, hashed on the way."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, name: str) -> Path:
        if not name or "/" in name or "\0" in name or name in (".", ".."):
            raise RemoteFileError(f"Refusing remote name {name!r}.", "Only plain file names are fetched.")
        return self.folder / name

    def list(self) -> list[RemoteFile]:
        files = []
        with os.scandir(self.folder) as entries:
            for entry in entries:
                info = entry.stat()  # follows links, like sFTP's listing: links to folders drop out
                if stat.S_ISREG(info.st_mode):
                    files.append(RemoteFile(entry.name, info.st_size, info.st_mtime))
        return sorted(files, key=lambda f: f.name)

    def download(self, name: str, dest: Path, expected_size: int, progress=None) -> str:
        path = self._path(name)
        try:
            src = open(path, "rb")
        except FileNotFoundError:
            raise RemoteFileError(f"{name} does not exist on the server (any more).", "") from None
        fd = create_private(dest)
        digest, written = hashlib.sha256(), 0
        try:
            with src, open(fd, "wb") as out:
                size = os.fstat(src.fileno()).st_size
                if size != expected_size:
                    raise FileChangedError(f"{name} is {size} bytes, not the {expected_size} listed.", "")
                while written < size and (chunk := src.read(min(CHUNK, size - written))):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    if progress:
                        progress(len(chunk))
                if os.fstat(src.fileno()).st_size != size:
                    raise FileChangedError(f"{name} changed size during the download.", "")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return digest.hexdigest()

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def close(self) -> None:
        pass

    def __enter__(self) -> "FolderRemote":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Made:
    """What the toy on-demand source holds: a statement's name, its date and its content."""

    name: str
    day: date
    data: bytes


class OnDemandRemote:
    """A toy on-demand source: no listing; ``produce`` writes each statement of the range into staging."""

    def __init__(self, statements: list[Made]) -> None:
        self.statements = statements

    def produce(self, since: date | None, until: date | None, staging: Path) -> Iterator:
        from ibreports.remote.registry import Produced

        for made in self.statements:
            if (since and made.day < since) or (until and made.day > until):
                continue
            path = staging / made.name
            fd = create_private(path)
            with open(fd, "wb") as out:
                out.write(made.data)
            yield Produced(made.name, path, len(made.data), hashlib.sha256(made.data).hexdigest())

    def close(self) -> None:
        pass

    def __enter__(self) -> "OnDemandRemote":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
