"""sFTP source (paramiko): pooled channels over one transport, bounded streaming downloads.

One SSH transport per source; each concurrent download gets its own SFTP channel
(at most ``source.connections``), because one SFTPClient must not be shared by threads.
"""

from __future__ import annotations

import errno
import posixpath
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import paramiko

from ..config import SourceConfig
from ..errors import AuthenticationError, ConfigError, ConnectionFailure, IbreportsError, FileChangedError, RemoteFileError
from ..files import HashingWriter, create_private
from . import Progress, net
from .listing import Guard, Listing, entry, skip
from .sftpio import pipelined, read_folder
from .ssh import Sha1Only, authenticate, load_private_key, ssh_failure, start_transport

KEEPALIVE = 30


def _discard(client: paramiko.SFTPClient) -> None:
    """Close a channel that may sit on a dead transport (closing then raises EOFError)."""
    try:
        client.close()
    except (EOFError, OSError, paramiko.SSHException):
        pass


class SftpRemote:
    """A logged-in sFTP session; thread-safe, reconnects when the transport died."""

    def __init__(self, source: SourceConfig, transport: paramiko.Transport | None = None,
                 key: paramiko.PKey | None = None) -> None:
        """Connect and log in; or take over ``transport``, already logged in (``doctor`` runs the steps)."""
        self.source = source
        self._key = key if key is not None else load_private_key(source)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(source.connections)
        self._idle: list[paramiko.SFTPClient] = []
        self._transport: paramiko.Transport | None = None
        with self._lock:
            if transport is None:
                self._connect()
            else:
                transport.set_keepalive(KEEPALIVE)
                self._transport = transport

    def _connect(self) -> None:
        transport = start_transport(self.source)
        try:
            authenticate(self.source, transport, self._key)
        except Sha1Only as exc:  # fetch does not fall back to SHA-1 on its own: the user opts in
            transport.close()
            exc.transport.close()
            raise AuthenticationError(exc.message, exc.remedy) from None
        except BaseException:
            transport.close()
            raise
        transport.set_keepalive(KEEPALIVE)
        self._transport = transport

    def _take(self) -> paramiko.SFTPClient:
        for attempt in (1, 2):
            with self._lock:
                if self._transport is None or not self._transport.is_active():
                    self._close_all()
                    self._connect()
                while self._idle:
                    client = self._idle.pop()
                    if not client.get_channel().closed:
                        return client
                transport = self._transport
            try:
                client = paramiko.SFTPClient.from_transport(transport)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                # The transport may be dead without knowing it yet: start a new one, once.
                with self._lock:
                    if self._transport is transport:
                        self._close_all()
                if attempt == 2:
                    raise ssh_failure(exc, self.source, "opening an SFTP channel") from None
                continue
            if client is None:
                raise ConnectionFailure(f"The server at {self.source.settings.host} refused an SFTP channel.", net.TRY_LATER)
            client.get_channel().settimeout(self.source.timeout)
            return client
        raise AssertionError("unreachable")

    @contextmanager
    def _client(self) -> Iterator[paramiko.SFTPClient]:
        """One channel for this thread; a channel that saw any error is closed, not reused."""
        with self._slots:
            client = self._take()
            try:
                yield client
            except BaseException:
                _discard(client)
                raise
            with self._lock:
                self._idle.append(client)

    def _path(self, name: str) -> str:
        if not name or "/" in name or "\0" in name or name in (".", ".."):
            raise RemoteFileError(f"Refusing remote name {name!r}.", "Only plain file names are fetched.")
        return posixpath.join(self.source.settings.remote_dir, name)

    def _error(self, exc: BaseException, name: str, client: paramiko.SFTPClient) -> IbreportsError:
        """Translate a paramiko/socket error into our family: file problems vs broken connections."""
        if isinstance(exc, IbreportsError):
            return exc
        code = getattr(exc, "errno", None)
        if code == errno.ENOENT:
            return RemoteFileError(f"{name} does not exist on the server (any more).", "It may have been purged or deleted.")
        if code in (errno.EACCES, errno.EPERM):
            return RemoteFileError(f"Permission denied for {name} on the server.", "Ask IBKR to check the folder's permissions.")
        if isinstance(exc, (TimeoutError, EOFError, paramiko.SSHException, ConnectionError)) or not self._alive(client):
            return ssh_failure(exc, self.source, f"the transfer of {name}")
        return RemoteFileError(f"The server failed on {name} ({exc}).", net.TRY_LATER)

    @staticmethod
    def _alive(client: paramiko.SFTPClient) -> bool:
        channel = client.get_channel()
        return not channel.closed and channel.get_transport().is_active()

    def list(self) -> Listing:
        """Regular files in remote_dir (a link counts when it points to a regular file).

        Entries with an impossible size or time are skipped and named (``Listing.skipped``);
        a listing beyond MAX_ENTRIES / MAX_BYTES stops with RemoteFileError.
        """
        folder = self.source.settings.remote_dir
        with self._client() as client:
            try:
                entries = read_folder(client, folder, Guard(self.source))
            except IbreportsError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                if getattr(exc, "errno", None) in (errno.ENOENT, errno.ENOTDIR):
                    raise ConfigError(
                        f"Remote folder {folder!r} does not exist on {self.source.settings.host}.",
                        net.REMOTE_DIR,
                    ) from None
                if getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM):
                    raise RemoteFileError(
                        f"Permission denied listing {folder!r} on {self.source.settings.host}.",
                        "Ask IBKR to check the folder's permissions for this username.",
                    ) from None
                raise self._error(exc, folder, client) from None
            files = Listing()
            for name, attr in entries:
                if isinstance(name, bytes):
                    skip(files, self.source, name.decode("utf-8", "replace"), "the name is not valid UTF-8")
                    continue
                mode = attr.st_mode or 0
                if stat.S_ISLNK(mode):
                    try:
                        attr = client.stat(posixpath.join(folder, name))
                    except Exception:  # noqa: BLE001 - a dangling or unreadable link is not a file
                        continue
                    mode = attr.st_mode or 0
                if stat.S_ISREG(mode):
                    if attr.st_size is None:
                        skip(files, self.source, name, "the server gave no size")
                        continue
                    entry(files, self.source, name, attr.st_size, attr.st_mtime or 0)
            return files

    def download(self, name: str, dest: Path, expected_size: int, progress: Progress | None = None) -> str:
        """Stream ``name`` into a new 0600 ``dest``; returns its SHA-256. RemoteFileError (dest removed) on a size mismatch."""
        path = self._path(name)
        fd = create_private(dest)
        try:
            with open(fd, "wb", buffering=1 << 20) as raw, self._client() as client:
                out = HashingWriter(raw)
                written = self._stream(client, path, name, expected_size, out, progress)
                if written != expected_size:
                    if not self._alive(client):
                        raise ConnectionFailure(f"The connection broke while downloading {name}.", net.RETRY)
                    raise FileChangedError(
                        f"{name}: received {written} bytes, expected {expected_size}; it changed during the download.",
                        "It is fetched again on the next run.",
                    )
        except BaseException:
            Path(dest).unlink(missing_ok=True)
            raise
        return out.hexdigest()

    def _stream(self, client, path, name, expected_size, out, progress) -> int:
        try:
            fh = client.open(path, "rb")
            size = fh.stat().st_size
        except Exception as exc:  # noqa: BLE001 - classified
            raise self._error(exc, name, client) from None
        if size != expected_size:
            raise FileChangedError(
                f"{name} is {size} bytes on the server, not the {expected_size} listed: it changed since the listing.",
                "It is fetched again on the next run (a file still being written settles first).",
            )
        written = 0
        guard = net.RateGuard(self.source, f"the download of {name}")
        blocks = pipelined(client, fh.handle, size, name)
        while True:
            try:
                data = next(blocks, None)
            except Exception as exc:  # noqa: BLE001 - the remote side only; local write errors stay OSError
                raise self._error(exc, name, client) from None
            if data is None:
                break
            out.write(data)
            written += len(data)
            guard.feed(len(data))
            if progress:
                progress(len(data))
        try:
            grown = fh.stat().st_size != size
            fh.close()  # only here: after an error the whole channel is dropped, which closes the file too
        except Exception as exc:  # noqa: BLE001 - classified
            raise self._error(exc, name, client) from None
        if grown:
            raise FileChangedError(
                f"{name} changed size during the download: it is still being written.",
                "It is fetched again on the next run, once it has settled.",
            )
        return written

    def delete(self, name: str) -> None:
        """Remove ``name`` from remote_dir; a file already gone counts as deleted."""
        path = self._path(name)
        with self._client() as client:
            try:
                client.remove(path)
            except Exception as exc:  # noqa: BLE001 - classified
                if getattr(exc, "errno", None) == errno.ENOENT:
                    return
                raise self._error(exc, name, client) from None

    def _close_all(self) -> None:
        for client in self._idle:
            _discard(client)
        self._idle.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def close(self) -> None:
        """Close every channel and the transport."""
        with self._lock:
            self._close_all()

    def __enter__(self) -> "SftpRemote":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
