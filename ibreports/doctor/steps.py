"""Diagnosis steps as plain data, a runner that times them, and the network steps every source shares."""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import SourceConfig
from ..errors import IbreportsError
from ..remote import Remote, RemoteFile, net

CAP = 10.0  # seconds: doctor never waits longer than this for one network step


@dataclass
class Step:
    """One check: ``ok`` True (passed), False (failed) or None (skipped)."""

    name: str
    ok: bool | None
    ms: int = 0
    detail: str = ""
    cause: str = ""
    fix: str = ""
    code: int = 0  # the exit code this failure maps to (0 unless failed)

    @property
    def status(self) -> str:
        return {True: "ok", False: "FAIL", None: "skip"}[self.ok]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


@dataclass
class Section:
    """The steps for one thing diagnosed: a source, the PGP keys or the archive."""

    kind: str  # "source" | "pgp" | "archive"
    name: str
    title: str
    steps: list[Step] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "title": self.title, "steps": [s.to_dict() for s in self.steps]}


class Degraded(Exception):
    """A step failed but produced something later steps can still use (e.g. a legacy login)."""

    def __init__(self, error: IbreportsError, value: Any, detail: str = "") -> None:
        super().__init__(error.message)
        self.error, self.value, self.detail = error, value, detail


class Checklist:
    """Runs steps in order, times them, and skips the rest after a blocking failure."""

    def __init__(self, section: Section) -> None:
        self.section = section
        self.blocked = False

    def step(self, name: str, fn: Callable[..., tuple[Any, str]], *args: Any, blocking: bool = True) -> Any:
        """Run ``fn(*args) -> (value, detail)``; return the value, or None when it failed or was skipped."""
        if self.blocked:
            return self.skip(name, "an earlier step failed")
        start = time.monotonic()
        try:
            value, detail = fn(*args)
        except Degraded as exc:
            self._fail(name, start, exc.error, exc.detail)
            return exc.value
        except IbreportsError as exc:
            self._fail(name, start, exc, "")
            self.blocked = self.blocked or blocking
            return None
        except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen library error: report, go on
            err = IbreportsError(f"Unexpected {type(exc).__name__}: {exc}.", "Run with --debug and report this.")
            self._fail(name, start, err, "")
            self.blocked = self.blocked or blocking
            return None
        self.section.steps.append(Step(name, True, _ms(start), detail))
        return value

    def skip(self, name: str, detail: str) -> None:
        self.section.steps.append(Step(name, None, 0, detail))
        return None

    def _fail(self, name: str, start: float, exc: IbreportsError, detail: str) -> None:
        self.section.steps.append(Step(name, False, _ms(start), detail, exc.message, exc.remedy, exc.exit_code))


def _ms(start: float) -> int:
    return int(round((time.monotonic() - start) * 1000))


# -- network steps shared by sFTP and FTP: the same functions fetch connects with ----------------

def resolve(source: SourceConfig) -> tuple[list[str], str]:
    """DNS: the host's addresses."""
    addresses = net.resolve(source)
    return addresses, f"{source.settings.host} -> {', '.join(addresses)}"


def connect_tcp(source: SourceConfig, addresses: list[str]) -> tuple[socket.socket, str]:
    """TCP: a connected socket to the first address that answers."""
    sock = net.connect_tcp(source, addresses)
    ip, local = sock.getpeername()[0], sock.getsockname()[0]
    return sock, f"{ip}:{source.settings.port} from {local}"


# -- the sample file each source offers for the PGP check ---------------------------------------

ENCRYPTED_SUFFIXES = (".pgp", ".gpg", ".asc")
SAMPLE_MAX = 20 * 1024 * 1024  # bytes: a sample is for the key check, not a download test


@dataclass(frozen=True)
class Sample:
    """One encrypted file downloaded from a source into doctor's private folder."""

    source: str
    name: str
    path: Path


def pick_sample(files: list[RemoteFile]) -> RemoteFile | None:
    """The smallest encrypted file no bigger than SAMPLE_MAX, or None."""
    candidates = [f for f in files if f.name.lower().endswith(ENCRYPTED_SUFFIXES) and 0 < f.size <= SAMPLE_MAX]
    return min(candidates, key=lambda f: (f.size, f.name)) if candidates else None


def count_detail(folder: str, names: list[str], skipped: int = 0) -> str:
    encrypted = sum(1 for n in names if n.lower().endswith(ENCRYPTED_SUFFIXES))
    extra = f", {skipped} listing entr{'y' if skipped == 1 else 'ies'} skipped (see the log)" if skipped else ""
    return f"{folder}: {len(names)} file(s), {encrypted} encrypted (.pgp/.gpg/.asc){extra}"


def listing_detail(folder: str, files: list[RemoteFile]) -> str:
    """count_detail of a remote's listing, with the entries it skipped."""
    return count_detail(folder, [f.name for f in files], len(getattr(files, "skipped", ())))


def download_sample(source: SourceConfig, remote: Remote, chosen: RemoteFile, staging: Path) -> tuple[Sample, str]:
    """The sample, downloaded with fetch's own download code."""
    dest = staging / f"{source.name}.sample"
    remote.download(chosen.name, dest, chosen.size)
    return Sample(source.name, chosen.name, dest), f"{chosen.name} ({chosen.size} bytes) for the PGP check"
