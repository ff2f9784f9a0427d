"""Diagnosis steps as plain data, a runner that times them, and the network steps every source shares."""

from __future__ import annotations

import errno
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import SourceConfig
from ..errors import ConnectionFailure, IbreportsError

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


# -- network steps shared by sFTP and FTP ------------------------------------------------------

def resolve(source: SourceConfig) -> tuple[list[str], str]:
    """DNS: the host's addresses."""
    try:
        infos = socket.getaddrinfo(source.settings.host, source.settings.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionFailure(
            f"Cannot resolve host {source.settings.host} ({exc.strerror}).",
            "Check the host name in the config (IBKR: xfer.interactivebrokers.com for sFTP, "
            "ftp2.interactivebrokers.com for FTP) and this machine's DNS settings.",
        ) from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    return addresses, f"{source.settings.host} -> {', '.join(addresses)}"


def egress_address(ip: str, port: int) -> str:
    """The local address this machine uses towards ``ip`` (a UDP connect sends no packet)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((ip, port))
            return probe.getsockname()[0]
    except OSError:
        return "an unknown address"


def connect_tcp(source: SourceConfig, addresses: list[str]) -> tuple[socket.socket, str]:
    """TCP: a connected socket to the first address that answers."""
    where = f"{source.settings.host}:{source.settings.port}"
    failure: ConnectionFailure | None = None
    for ip in addresses:
        try:
            sock = socket.create_connection((ip, source.settings.port), timeout=source.timeout)
        except ConnectionRefusedError:
            failure = ConnectionFailure(
                f"{where} ({ip}) refused the connection: nothing listens on port {source.settings.port}.",
                f"Wrong port or host: {source.settings.ibkr_server}; check host and port in the config, and that no "
                "local firewall rejects the connection.",
            )
        except TimeoutError:
            failure = ConnectionFailure(
                f"No answer from {where} ({ip}) within {source.timeout:g} s: the connection attempt was dropped.",
                "A firewall or IBKR's IP whitelisting: IBKR must whitelist your public IP; this machine connected "
                f"from {egress_address(ip, source.settings.port)} (behind NAT your public IP is your gateway's). Also make "
                f"sure outgoing TCP port {source.settings.port} is open.",
            )
        except OSError as exc:
            unreachable = exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)
            failure = ConnectionFailure(
                f"Cannot connect to {where} ({ip}): {exc.strerror or exc}.",
                "This machine has no network route to the server: check its network connection, default route "
                f"and proxy settings (it would connect from {egress_address(ip, source.settings.port)})."
                if unreachable else "Check the network, host and port.",
            )
        else:
            sock.settimeout(source.timeout)
            local = sock.getsockname()[0]
            return sock, f"{ip}:{source.settings.port} from {local}"
    assert failure is not None
    raise failure


# -- the sample file each source offers for the PGP check ---------------------------------------

ENCRYPTED_SUFFIXES = (".pgp", ".gpg", ".asc")
SAMPLE_MAX = 20 * 1024 * 1024  # bytes: a sample is for the key check, not a download test


@dataclass(frozen=True)
class Sample:
    """One encrypted file downloaded from a source into doctor's private folder."""

    source: str
    name: str
    path: Path


def pick_sample(files: list[tuple[str, int]]) -> tuple[str, int] | None:
    """The smallest encrypted (name, size) no bigger than SAMPLE_MAX, or None."""
    candidates = [f for f in files if f[0].lower().endswith(ENCRYPTED_SUFFIXES) and 0 < f[1] <= SAMPLE_MAX]
    return min(candidates, key=lambda f: (f[1], f[0])) if candidates else None


def count_detail(folder: str, names: list[str]) -> str:
    encrypted = sum(1 for n in names if n.lower().endswith(ENCRYPTED_SUFFIXES))
    return f"{folder}: {len(names)} file(s), {encrypted} encrypted (.pgp/.gpg/.asc)"
