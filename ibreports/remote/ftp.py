"""FTP / FTPS source (ftplib): pooled connections, MLSD listing with a fallback, streaming downloads.

ftplib is not thread-safe, so each concurrent download gets its own logged-in
connection (at most ``source.connections``).
"""

from __future__ import annotations

import ftplib
import ssl
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..config import SourceConfig
from ..errors import ConnectionFailure, FileChangedError, IbreportsError, RemoteFileError
from ..files import HashingWriter, create_private
from . import Progress, net
from .ftpconn import NETWORK_ERRORS, connect, ftp_failure, supports_mlsd
from .ftplisting import list_mlsd, list_nlst
from .listing import Listing

BLOCK = 1 << 16
IDLE_CHECK = 30  # seconds idle after which a pooled connection is probed with NOOP


class _LocalWriteError(Exception):
    """Wraps an OSError from writing the local file, so it is not taken for a network error."""


class FtpRemote:
    """Logged-in FTP session(s) for one source; thread-safe, reconnects as needed."""

    def __init__(self, source: SourceConfig, ftp: ftplib.FTP | None = None) -> None:
        """Connect and log in; or take over ``ftp``, already logged in (``doctor`` runs the steps)."""
        self.source = source
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(source.connections)
        self._idle: list[tuple[ftplib.FTP, float]] = []
        first = ftp if ftp is not None else connect(source)
        try:
            self._mlsd = supports_mlsd(first)
        except Exception as exc:  # noqa: BLE001 - the backend's error table classifies it
            first.close()
            raise ftp_failure(exc, source, "FEAT") from None
        self._idle.append((first, time.monotonic()))

    @property
    def uses_mlsd(self) -> bool:
        """True while listings use MLSD (the server offers it), False for NLST + SIZE + MDTM."""
        return self._mlsd

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

    def _broken(self, exc: BaseException, what: str) -> IbreportsError:
        return ftp_failure(exc, self.source, what)

    @staticmethod
    def _check(name: str) -> str:
        if not name or "/" in name or "\0" in name or "\r" in name or "\n" in name or name in (".", ".."):
            raise RemoteFileError(f"Refusing remote name {name!r}.", "Only plain file names are fetched.")
        return name

    def list(self) -> Listing:
        """Regular files in remote_dir, via MLSD when offered, else NLST + SIZE + MDTM.

        Entries with an impossible size or time are skipped and named (``Listing.skipped``);
        a listing beyond MAX_ENTRIES / MAX_BYTES stops with RemoteFileError.
        """
        with self._conn() as ftp:
            try:
                if self._mlsd:
                    try:
                        return list_mlsd(ftp, self.source)
                    except ftplib.error_perm as exc:
                        if not str(exc)[:3] in ("500", "501", "502", "504"):
                            raise
                        self._mlsd = False  # advertised but refused: fall back for good
                return list_nlst(ftp, self.source)
            except ftplib.error_perm as exc:
                raise RemoteFileError(
                    f"The server refused to list {self.source.settings.remote_dir!r} ({exc}).",
                    "Check remote_dir and ask IBKR to check the folder's permissions.",
                ) from None
            except IbreportsError:
                raise
            except Exception as exc:  # noqa: BLE001 - the backend's error table classifies it
                raise self._broken(exc, "the listing") from None

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
                        guard = net.RateGuard(self.source, f"the download of {name}")
                        with ftp.transfercmd(f"RETR {name}") as conn:
                            while data := conn.recv(BLOCK):
                                try:
                                    out.write(data)
                                except OSError as exc:
                                    raise _LocalWriteError() from exc
                                written += len(data)
                                guard.feed(len(data))
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
                except IbreportsError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the backend's error table classifies it
                    raise self._broken(exc, f"the download of {name}") from None
            if written != expected_size and current == expected_size:
                raise ConnectionFailure(
                    f"The FTP data connection for {name} closed after {written} of {expected_size} bytes.",
                    net.RETRY,
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
            except IbreportsError:
                raise
            except Exception as exc:  # noqa: BLE001 - the backend's error table classifies it
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
