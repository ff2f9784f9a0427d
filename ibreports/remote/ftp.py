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
from ..errors import ConnectionFailure, FileChangedError, IbreportsError, RemoteFileError
from ..files import HashingWriter, create_private
from . import Progress, net
from .ftpconn import NETWORK_ERRORS, connect, ftp_failure, supports_mlsd
from .listing import Guard, Listing, entry, skip

BLOCK = 1 << 16
MAX_LINE = 8192  # bytes per listing line (ftplib's own limit)
IDLE_CHECK = 30  # seconds idle after which a pooled connection is probed with NOOP


class _LocalWriteError(Exception):
    """Wraps an OSError from writing the local file, so it is not taken for a network error."""


def _mtime(value: str) -> float:
    """RFC 3659 time-val (YYYYMMDDHHMMSS[.sss], UTC) to epoch seconds; ValueError when it is not one."""
    value = value.strip()
    if len(value) < 14 or not value[:14].isdigit() or not (len(value) == 14 or value[14] == "." and value[15:].isdigit()):
        raise ValueError(f"modification time {value[:40]!r} is not YYYYMMDDHHMMSS[.sss]")
    stamp = datetime.datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=datetime.timezone.utc)
    frac = float("0" + value[14:]) if len(value) > 15 else 0.0
    return stamp.timestamp() + frac


def _size(value: str) -> int:
    value = value.strip()
    if not value.isdigit():
        raise ValueError(f"size {value[:40]!r} is not a number")
    return int(value)


def _lines(ftp: ftplib.FTP, cmd: str, guard: Guard, listing: Listing, source: SourceConfig) -> Iterator[bytes]:
    """The lines of a listing command, as bytes, counted by ``guard``.

    ftplib's ``mlsd``/``nlst`` read without bound, and one line that is not UTF-8 or longer than
    8 KiB fails the whole listing there; here such a line is skipped and named.
    """
    ftp.sendcmd("TYPE A")
    rate = net.RateGuard(source, "the listing")
    with ftp.transfercmd(cmd) as conn, conn.makefile("rb") as fp:
        while line := fp.readline(MAX_LINE):
            guard.add(len(line), 1)
            rate.feed(len(line))
            if not line.endswith(b"\n") and len(line) >= MAX_LINE:
                while (rest := fp.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                    guard.add(len(rest))
                guard.add(len(rest))
                skip(listing, source, line[:60].decode("utf-8", "replace") + "...",
                     f"listing line longer than {MAX_LINE} bytes")
                continue
            yield line.rstrip(b"\r\n")
        if isinstance(conn, ssl.SSLSocket):
            conn.unwrap()
    ftp.voidresp()


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
            except IbreportsError:
                raise
            except Exception as exc:  # noqa: BLE001 - the backend's error table classifies it
                raise self._broken(exc, "the listing") from None

    def _list_mlsd(self, ftp: ftplib.FTP) -> Listing:
        files = Listing()
        entries = []
        for line in _lines(ftp, "MLSD", Guard(self.source), files, self.source):
            raw_facts, _, raw_name = line.partition(b" ")
            try:
                name = raw_name.decode("utf-8")
            except UnicodeDecodeError:
                skip(files, self.source, raw_name.decode("utf-8", "replace"), "the name is not valid UTF-8")
                continue
            facts = {}
            for fact in raw_facts.decode("ascii", "replace").rstrip(";").split(";"):
                key, _, value = fact.partition("=")
                facts[key.lower()] = value
            entries.append((name, facts))
        ftp.voidcmd("TYPE I")  # listing switched to ASCII; SIZE and RETR need binary
        for name, facts in entries:
            if facts.get("type", "").lower() != "file" or "/" in name:
                continue
            try:
                size = _size(facts["size"]) if "size" in facts else self._size(ftp, name)
                mtime = _mtime(facts["modify"]) if "modify" in facts else self._mdtm(ftp, name)
            except (ValueError, OverflowError) as exc:
                skip(files, self.source, name, str(exc))
                continue
            entry(files, self.source, name, size, mtime)
        return files

    def _list_nlst(self, ftp: ftplib.FTP) -> Listing:
        files = Listing()
        try:
            lines = list(_lines(ftp, "NLST", Guard(self.source), files, self.source))
        except ftplib.error_perm as exc:
            if str(exc)[:3] in ("450", "550"):  # some servers answer an empty folder with "no files"
                return files
            raise
        ftp.voidcmd("TYPE I")  # listing switched to ASCII; SIZE and RETR need binary
        for raw in lines:
            try:
                name = posixpath.basename(raw.decode("utf-8").rstrip("/"))
            except UnicodeDecodeError:
                skip(files, self.source, raw.decode("utf-8", "replace"), "the name is not valid UTF-8")
                continue
            if name in ("", ".", ".."):
                continue
            try:
                size = self._size(ftp, name)  # refused for folders: that is how they are told apart here
            except ftplib.error_perm:
                continue
            try:
                mtime = self._mdtm(ftp, name)
            except (ValueError, OverflowError) as exc:
                skip(files, self.source, name, str(exc))
                continue
            entry(files, self.source, name, size, mtime)
        return files

    @staticmethod
    def _size(ftp: ftplib.FTP, name: str) -> int | str:
        """SIZE of ``name``; the raw answer (an impossible size, skipped by the caller) when not a number."""
        reply = ftp.sendcmd(f"SIZE {name}")
        try:
            return _size(reply[3:]) if reply[:3] == "213" else reply[:40]
        except ValueError:
            return reply[3:].strip()[:40]

    @staticmethod
    def _mdtm(ftp: ftplib.FTP, name: str) -> float:
        try:
            reply = ftp.voidcmd(f"MDTM {name}")
        except ftplib.error_perm:
            return 0.0  # unknown age: treated as old, so it is fetched rather than waited for
        return _mtime(reply[3:])

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
