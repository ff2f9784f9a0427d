"""FTP / FTPS source (ftplib): pooled connections, MLSD listing with a fallback, streaming downloads.

ftplib is not thread-safe, so each concurrent download gets its own logged-in
connection (at most ``source.connections``).
"""

from __future__ import annotations

import datetime
import ftplib
import posixpath
import ssl
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..config import SourceConfig
from ..errors import ConnectionFailure, FileChangedError, RemoteFileError
from ..files import HashingWriter, create_private
from . import Progress, RemoteFile
from .ftpconn import NETWORK_ERRORS, DataChannelError, connect, supports_mlsd

BLOCK = 1 << 16
IDLE_CHECK = 30  # seconds idle after which a pooled connection is probed with NOOP


class _LocalWriteError(Exception):
    """Wraps an OSError from writing the local file, so it is not taken for a network error."""


def _mtime(value: str) -> float:
    """RFC 3659 time-val (YYYYMMDDHHMMSS[.sss], UTC) to epoch seconds."""
    stamp = datetime.datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=datetime.timezone.utc)
    frac = float("0" + value[14:]) if value[14:15] == "." else 0.0
    return stamp.timestamp() + frac


class FtpRemote:
    """Logged-in FTP session(s) for one source; thread-safe, reconnects as needed."""

    def __init__(self, source: SourceConfig) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(source.connections)
        self._idle: list[tuple[ftplib.FTP, float]] = []
        first = connect(source)
        self._mlsd = supports_mlsd(first)
        self._idle.append((first, time.monotonic()))

    def _take(self) -> ftplib.FTP:
        while True:
            with self._lock:
                if not self._idle:
                    break
                ftp, since = self._idle.pop()
            if time.monotonic() - since < IDLE_CHECK:
                return ftp
            try:
                ftp.voidcmd("NOOP")  # servers drop idle clients; find out before a transfer
                return ftp
            except (*NETWORK_ERRORS, ftplib.error_perm):
                ftp.close()
        return connect(self.source)

    @contextmanager
    def _conn(self) -> Iterator[ftplib.FTP]:
        """One connection for this thread; after anything but a clean 5xx reply it is dropped."""
        with self._slots:
            ftp = self._take()
            try:
                yield ftp
            except ftplib.error_perm:
                self._give(ftp)
                raise
            except BaseException:
                ftp.close()
                raise
            self._give(ftp)

    def _give(self, ftp: ftplib.FTP) -> None:
        with self._lock:
            self._idle.append((ftp, time.monotonic()))

    def _broken(self, exc: BaseException, what: str) -> ConnectionFailure:
        where = f"{self.source.settings.host}:{self.source.settings.port}"
        if isinstance(exc, DataChannelError):
            remedy = (
                "Passive mode is on: a firewall blocks outgoing connections to the server's passive data ports "
                "(above 1024); allow them." if self.source.settings.passive else
                "Active mode needs the server to connect back to you, which firewalls and NAT block: set passive = true."
            )
            return ConnectionFailure(f"Cannot open the FTP data connection for {what} ({exc}).", remedy)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return ConnectionFailure(f"The FTPS data channel certificate of {where} could not be verified.", "Set ca_file.")
        return ConnectionFailure(
            f"The connection to {where} broke during {what} ({type(exc).__name__}: {exc}).",
            "Retried automatically; if it persists, check the network.",
        )

    @staticmethod
    def _check(name: str) -> str:
        if not name or "/" in name or "\0" in name or "\r" in name or "\n" in name or name in (".", ".."):
            raise RemoteFileError(f"Refusing remote name {name!r}.", "Only plain file names are fetched.")
        return name

    def list(self) -> list[RemoteFile]:
        """Regular files in remote_dir, via MLSD when offered, else NLST + SIZE + MDTM."""
        with self._conn() as ftp:
            try:
                if self._mlsd:
                    try:
                        return self._list_mlsd(ftp)
                    except ftplib.error_perm as exc:
                        if not str(exc)[:3] in ("500", "501", "502", "504"):
                            raise
                        self._mlsd = False  # advertised but refused: fall back for good
                return self._list_nlst(ftp)
            except ftplib.error_perm as exc:
                raise RemoteFileError(
                    f"The server refused to list {self.source.settings.remote_dir!r} ({exc}).",
                    "Check remote_dir and ask IBKR to check the folder's permissions.",
                ) from None
            except (*NETWORK_ERRORS, ssl.SSLError) as exc:
                raise self._broken(exc, "the listing") from None

    def _list_mlsd(self, ftp: ftplib.FTP) -> list[RemoteFile]:
        entries = list(ftp.mlsd())
        ftp.voidcmd("TYPE I")  # listing switched to ASCII; SIZE and RETR need binary
        files = []
        for name, facts in entries:
            if facts.get("type", "").lower() != "file" or "/" in name:
                continue
            size = int(facts["size"]) if "size" in facts else ftp.size(name)
            mtime = _mtime(facts["modify"]) if "modify" in facts else self._mdtm(ftp, name)
            files.append(RemoteFile(name, int(size or 0), mtime))
        return files

    def _list_nlst(self, ftp: ftplib.FTP) -> list[RemoteFile]:
        try:
            names = ftp.nlst()
        except ftplib.error_perm as exc:
            if str(exc)[:3] in ("450", "550"):  # some servers answer an empty folder with "no files"
                return []
            raise
        ftp.voidcmd("TYPE I")  # listing switched to ASCII; SIZE and RETR need binary
        files = []
        for raw in names:
            name = posixpath.basename(raw.rstrip("/"))
            if name in ("", ".", ".."):
                continue
            try:
                size = ftp.size(name)  # refused for folders: that is how they are told apart here
            except ftplib.error_perm:
                continue
            files.append(RemoteFile(name, int(size or 0), self._mdtm(ftp, name)))
        return files

    @staticmethod
    def _mdtm(ftp: ftplib.FTP, name: str) -> float:
        try:
            reply = ftp.voidcmd(f"MDTM {name}")
        except ftplib.error_perm:
            return 0.0  # unknown age: treated as old, so it is fetched rather than waited for
        return _mtime(reply.split()[-1])

    def download(self, name: str, dest: Path, expected_size: int, progress: Progress | None = None) -> str:
        """Stream ``name`` into a new 0600 ``dest``; returns its SHA-256. RemoteFileError (dest removed) on a size mismatch."""
        self._check(name)
        fd = create_private(dest)
        written = 0
        try:
            with open(fd, "wb", buffering=1 << 20) as raw:
                out = HashingWriter(raw)
                try:
                    with self._conn() as ftp:
                        ftp.voidcmd("TYPE I")  # every transfer in binary, whatever ran before
                        with ftp.transfercmd(f"RETR {name}") as conn:
                            while data := conn.recv(BLOCK):
                                try:
                                    out.write(data)
                                except OSError as exc:
                                    raise _LocalWriteError() from exc
                                written += len(data)
                                if progress:
                                    progress(len(data))
                            if isinstance(conn, ssl.SSLSocket):
                                conn.unwrap()
                        ftp.voidresp()
                        # A data channel cut with a clean FIN looks like the end of the file, and the
                        # server may already have answered 226: only the file's current size tells a
                        # broken transfer (retry it) from a file that changed (wait for the next run).
                        current = self._server_size(ftp, name) if written != expected_size else written
                except _LocalWriteError as exc:
                    raise exc.__cause__ from None
                except ftplib.error_perm as exc:
                    raise RemoteFileError(f"The server refused {name} ({exc}).", "It may have been purged or deleted.") from None
                except (*NETWORK_ERRORS, ssl.SSLError) as exc:
                    raise self._broken(exc, f"the download of {name}") from None
            if written != expected_size and current == expected_size:
                raise ConnectionFailure(
                    f"The FTP data connection for {name} closed after {written} of {expected_size} bytes.",
                    "Retried automatically; if it persists, check the network.",
                )
            if written != expected_size:
                raise FileChangedError(
                    f"{name}: received {written} bytes, expected {expected_size}; it changed since the listing.",
                    "It is fetched again on the next run.",
                )
        except BaseException:
            Path(dest).unlink(missing_ok=True)
            raise
        return out.hexdigest()

    @staticmethod
    def _server_size(ftp: ftplib.FTP, name: str) -> int | None:
        """SIZE of ``name`` in binary mode, or None when the server cannot say (gone, unsupported)."""
        try:
            return ftp.size(name)
        except (ftplib.error_perm, ftplib.error_temp, ftplib.error_reply, ftplib.error_proto, ValueError):
            return None  # a network error propagates: the connection itself broke

    def delete(self, name: str) -> None:
        """Remove ``name`` from remote_dir; a file already gone counts as deleted."""
        self._check(name)
        with self._conn() as ftp:
            try:
                try:
                    ftp.delete(name)
                except ftplib.error_perm as exc:
                    try:
                        ftp.size(name)
                    except ftplib.error_perm:
                        return  # gone
                    raise RemoteFileError(f"The server refused to delete {name} ({exc}).", "Check the folder's permissions.") from None
            except (*NETWORK_ERRORS, ssl.SSLError) as exc:
                raise self._broken(exc, f"deleting {name}") from None

    def close(self) -> None:
        """Log out of every pooled connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for ftp, _ in idle:
            try:
                ftp.quit()
            except (*NETWORK_ERRORS, ftplib.error_perm, ssl.SSLError):
                pass
            ftp.close()

    def __enter__(self) -> "FtpRemote":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
