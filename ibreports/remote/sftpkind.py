"""The ``sftp`` kind: its settings and registration (the session code is in sftp.py and ssh.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..secrets import Secret
from .registry import Capabilities, SettingError, SourceKind, register

if TYPE_CHECKING:
    from contextlib import ExitStack

    from ..config import SourceConfig
    from ..doctor.checklist import Checklist, Sample
    from .sftp import SftpRemote


@dataclass(frozen=True)
class SftpSettings:
    """Keys of an ``kind = "sftp"`` source beyond the common ones."""

    ibkr_server: ClassVar[str] = "IBKR's sFTP server is xfer.interactivebrokers.com port 32"  # for remedies
    greeting: ClassVar[str] = "SSH banner"  # what the server sends first
    host: str = "xfer.interactivebrokers.com"
    port: int = 32
    username: str = ""
    remote_dir: str = "outgoing"
    key_file: Path | None = None
    key_passphrase: Secret | None = None
    known_hosts: Path | None = None  # default: known_hosts next to key_file
    disabled_algorithms: dict[str, list[str]] | None = None
    proxy_command: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def checked(self) -> "SftpSettings":
        check_server(self.host, self.port, self.username)
        algos = self.disabled_algorithms
        if algos is not None and not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in algos.values()
        ):
            raise SettingError("disabled_algorithms", "a table of string lists")
        if self.key_file is None:
            raise SettingError("key_file", "the path of the sFTP private key (ibreports keygen writes keys/ibkr_sftp_rsa)")
        if self.known_hosts is None:
            return dataclasses.replace(self, known_hosts=self.key_file.parent / "known_hosts")
        return self


def check_server(host: str, port: int, username: str) -> None:
    """The checks every host/port/username kind shares."""
    if not host:
        raise SettingError("host", "a host name or address")
    if not 0 < port < 65536:
        raise SettingError("port", "a TCP port between 1 and 65535")
    if not username:
        raise SettingError("username", "a non-empty string")


def _open(source: "SourceConfig") -> "SftpRemote":
    from .sftp import SftpRemote

    return SftpRemote(source)


def _doctor(source: "SourceConfig", cl: "Checklist", stack: "ExitStack", staging: Path) -> "Sample | None":
    from ..doctor.sftp import check_sftp

    return check_sftp(source, cl, stack, staging)


def _slots(source: "SourceConfig") -> list[str]:
    """One login per run: channels are multiplexed over one SSH transport."""
    return [f"ibkr-{source.settings.host}"]


SFTP = register(SourceKind(
    name="sftp",
    settings=SftpSettings,
    open=_open,
    doctor=_doctor,
    slots=_slots,
    capabilities=Capabilities(listing=True, delete=True, host_keys=True),
))
