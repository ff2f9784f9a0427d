"""The ``ftp`` kind (FTP and FTPS): its settings and registration (the session code is in ftp.py and ftpconn.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..secrets import Secret
from .registry import Capabilities, SettingError, SourceKind, register
from .sftpkind import check_server

if TYPE_CHECKING:
    from contextlib import ExitStack

    from ..config import SourceConfig
    from ..doctor.checklist import Checklist, Sample
    from .ftp import FtpRemote


@dataclass(frozen=True)
class FtpSettings:
    """Keys of an ``kind = "ftp"`` source beyond the common ones."""

    ibkr_server: ClassVar[str] = "IBKR's FTP server is ftp2.interactivebrokers.com port 21"  # for remedies
    greeting: ClassVar[str] = "FTP greeting"  # what the server sends first
    host: str = "ftp2.interactivebrokers.com"
    port: int = 21
    username: str = ""
    password: Secret | None = None
    remote_dir: str = "outgoing"
    passive: bool = True
    tls: bool = False
    ca_file: Path | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def checked(self) -> "FtpSettings":
        check_server(self.host, self.port, self.username)
        if self.password is None:
            raise SettingError("password", "the FTP password or a reference such as env:IBREPORTS_FTP_PASSWORD")
        return self


def _open(source: "SourceConfig") -> "FtpRemote":
    from .ftp import FtpRemote

    return FtpRemote(source)


def _doctor(source: "SourceConfig", cl: "Checklist", stack: "ExitStack", staging: Path) -> "Sample | None":
    from ..doctor.ftp import check_ftp

    return check_ftp(source, cl, stack, staging)


def _slots(source: "SourceConfig") -> list[str]:
    """One logged-in connection per parallel download (ftplib is not thread-safe)."""
    return [f"ibkr-{source.settings.host}"] * source.connections


FTP = register(SourceKind(
    name="ftp",
    settings=FtpSettings,
    open=_open,
    doctor=_doctor,
    slots=_slots,
    capabilities=Capabilities(listing=True, delete=True, host_keys=False),
    allow_plain_default=False,  # IBKR requires PGP on FTP: a plain file there may be forged in transit
))
