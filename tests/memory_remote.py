"""A toy source kind that lives in memory, registered by the tests only (never by the library).

It shows what a new kind needs and nothing more: a settings dataclass, a Remote, doctor steps,
its slots and its capabilities, handed to ``register``. Importing this module registers it as
``kind = "memory"``; it then passes the remote contract suite beside sFTP and FTP, and a config
may name it like any other kind. A source's ``store`` names a :class:`MemoryServer` in ``SERVERS``.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from ibreports.config import SourceConfig
from ibreports.doctor.steps import Checklist, Sample, count_detail
from ibreports.errors import ConfigError, FileChangedError, RemoteFileError
from ibreports.files import HashingWriter, create_private
from ibreports.remote import Progress, RemoteFile
from ibreports.remote.registry import Capabilities, SettingError, SourceKind, register

BLOCK = 1 << 16


@dataclass
class Stored:
    data: bytearray
    mtime: float


@dataclass
class MemoryServer:
    """The "server": regular files by name, and names that are not files (folders, links to folders)."""

    files: dict[str, Stored] = field(default_factory=dict)
    others: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


SERVERS: dict[str, MemoryServer] = {}


@dataclass(frozen=True)
class MemorySettings:
    store: str = ""

    def checked(self) -> "MemorySettings":
        if not self.store:
            raise SettingError("store", "the name of an in-memory server")
        return self


def _check(name: str) -> str:
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise RemoteFileError(f"Refusing remote name {name!r}.", "Only plain file names are fetched.")
    return name


class MemoryRemote:
    """A Remote over a MemoryServer; streams like the real ones (bounded memory, hashed on the way)."""

    def __init__(self, source: SourceConfig) -> None:
        server = SERVERS.get(source.settings.store)
        if server is None:
            raise ConfigError(f"No in-memory server named {source.settings.store!r}.", "Start one first.")
        self.server = server

    def list(self) -> list[RemoteFile]:
        with self.server.lock:
            return [RemoteFile(name, len(f.data), f.mtime) for name, f in self.server.files.items()]

    def download(self, name: str, dest: Path, expected_size: int, progress: Progress | None = None) -> str:
        with self.server.lock:
            stored = self.server.files.get(_check(name))
        if stored is None:
            raise RemoteFileError(f"{name} does not exist on the server (any more).", "It may have been purged.")
        size = len(stored.data)
        if size != expected_size:
            raise FileChangedError(f"{name} is {size} bytes, not the {expected_size} listed.", "Fetched next run.")
        fd = create_private(dest)
        try:
            with open(fd, "wb") as raw:
                out = HashingWriter(raw)
                for offset in range(0, size, BLOCK):
                    chunk = bytes(stored.data[offset:offset + BLOCK])
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
            if len(stored.data) != size:
                raise FileChangedError(f"{name} changed size during the download.", "Fetched once it settled.")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return out.hexdigest()

    def delete(self, name: str) -> None:
        with self.server.lock:
            self.server.files.pop(_check(name), None)

    def close(self) -> None:
        pass

    def __enter__(self) -> "MemoryRemote":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _doctor(source: SourceConfig, cl: Checklist, stack: ExitStack, staging: Path) -> Sample | None:
    remote = cl.step("open", lambda: (MemoryRemote(source), f"in-memory server {source.settings.store}"))
    # Skipped by the checklist when "open" failed.
    cl.step("list", lambda: (None, count_detail(source.settings.store, [f.name for f in remote.list()])))
    return None


MEMORY = register(SourceKind(
    name="memory",
    settings=MemorySettings,
    open=MemoryRemote,
    doctor=_doctor,
    slots=lambda source: [f"memory-{source.settings.store}"],
    capabilities=Capabilities(listing=True, delete=True),
))
