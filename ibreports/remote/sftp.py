"""sFTP source (paramiko): pooled channels over one transport, bounded streaming downloads.

One SSH transport per source; each concurrent download gets its own SFTP channel
(at most ``source.connections``), because one SFTPClient must not be shared by threads.
"""

from __future__ import annotations

import errno
import posixpath
import stat
import threading
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import paramiko
from paramiko.sftp import CMD_DATA, CMD_READ, CMD_STATUS, int64

from ..config import SourceConfig
from ..errors import ConfigError, ConnectionFailure, IbreportsError, FileChangedError, RemoteFileError
from ..files import HashingWriter, create_private
from . import Progress, RemoteFile
from .ssh import authenticate, load_private_key, start_transport

# Read requests of 127 KiB in 128 KiB channel packets (see ssh.WINDOW/MAX_PACKET): paramiko's
# per-packet cost dominates bulk downloads, and 4x fewer packets took 600 MB from 5.1 s to 2.9 s
# here. A server that answers with less shrinks the request size to what it sends.
BLOCK = 130048
IN_FLIGHT = 64  # outstanding reads per download: at most 8 MB in flight (OpenSSH sftp: 64 of up to 256 KiB)
KEEPALIVE = 30


class _Replies:
    """Collects read replies for our requests (paramiko hands them to ``_async_response``)."""

    def __init__(self) -> None:
        self.arrived: dict[int, tuple[int, paramiko.Message]] = {}

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        self.arrived[num] = (t, msg)


def _read_reply(client: paramiko.SFTPClient, replies: _Replies, num: int) -> bytes:
    """The data answering request ``num``; b"" at end of file."""
    while num not in replies.arrived:
        client._read_response()  # reads one reply and routes it to ``replies``
    kind, msg = replies.arrived.pop(num)
    if kind == CMD_STATUS:
        try:
            client._convert_status(msg)
        except EOFError:
            return b""  # the file is shorter than listed
        raise paramiko.SFTPError("read answered with a bare OK status")
    if kind != CMD_DATA:
        raise paramiko.SFTPError(f"unexpected reply type {kind} to a read")
    return msg.get_string()


def _pipelined(client: paramiko.SFTPClient, handle: bytes, size: int, name: str) -> Iterator[bytes]:
    """Yield the file's bytes in order with IN_FLIGHT reads outstanding, as OpenSSH's sftp does.

    paramiko's own prefetch uses a helper thread that busy-waits (10 ms sleeps) when capped and
    can outlive an aborted transfer; this loop needs no thread, and at most IN_FLIGHT blocks are
    requested and not yet written, so a 1 GB file costs a few MB of memory like a 1 kB one.
    It relies on SFTPClient's request primitives (``_async_request``, ``_read_response``), stable
    since paramiko 1.x; paramiko is pinned and the remote contract suite runs this path.

    Raises:
        FileChangedError: a read at offset ``size`` returned data: the file is longer than listed.
    """
    replies = _Replies()
    pending: deque[tuple[int, int, int]] = deque()  # (request number, offset, length), in file order
    offset = 0
    block = BLOCK
    probed = False
    while offset < size or pending or not probed:
        if len(pending) <= IN_FLIGHT // 2:  # refill in bursts: fewer, fuller packets than one per reply
            while offset < size and len(pending) < IN_FLIGHT:
                length = min(block, size - offset)
                pending.append((client._async_request(replies, CMD_READ, handle, int64(offset), length), offset, length))
                offset += length
            if offset >= size and not probed:
                # Stopping at the listed size would archive a truncated copy when the listing
                # under-reports: one more read, pipelined behind the others, must hit end of file.
                pending.append((client._async_request(replies, CMD_READ, handle, int64(size), 1), size, 0))
                probed = True
        num, start, length = pending.popleft()
        data = _read_reply(client, replies, num)
        if not length:  # the end-of-file probe, always the last request
            if data:
                raise FileChangedError(
                    f"{name} is longer than the {size} bytes listed: it changed since the listing.",
                    "It is fetched again on the next run (a file still being written settles first).",
                )
            return
        while data:
            yield data
            start, length = start + len(data), length - len(data)
            if not length:
                break
            block = max(4096, min(block, len(data)))  # the server's largest read: ask no more later
            # A short read is legal: ask for the rest of this block before moving on.
            data = _read_reply(client, replies, client._async_request(replies, CMD_READ, handle, int64(start), length))
        if length:
            return  # end of file before the listed size: the caller compares sizes


def _discard(client: paramiko.SFTPClient) -> None:
    """Close a channel that may sit on a dead transport (closing then raises EOFError)."""
    try:
        client.close()
    except (EOFError, OSError, paramiko.SSHException):
        pass


class SftpRemote:
    """A logged-in sFTP session; thread-safe, reconnects when the transport died."""

    def __init__(self, source: SourceConfig) -> None:
        self.source = source
        self._key = load_private_key(source)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(source.connections)
        self._idle: list[paramiko.SFTPClient] = []
        self._transport: paramiko.Transport | None = None
        with self._lock:
            self._connect()

    def _connect(self) -> None:
        transport = start_transport(self.source)
        try:
            authenticate(self.source, transport, self._key)
        except IbreportsError:
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
                    raise ConnectionFailure(
                        f"Cannot open an SFTP channel on {self.source.settings.host} ({type(exc).__name__}).", "Try again."
                    ) from None
                continue
            if client is None:
                raise ConnectionFailure(f"The server at {self.source.settings.host} refused an SFTP channel.", "Try again later.")
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
        if isinstance(exc, TimeoutError):
            return ConnectionFailure(
                f"{self.source.settings.host}:{self.source.settings.port} sent nothing for {self.source.timeout:g} s.",
                "Retried automatically; if it persists, check the network or raise timeout.",
            )
        if isinstance(exc, (EOFError, paramiko.SSHException, ConnectionError)) or not self._alive(client):
            return ConnectionFailure(
                f"The connection to {self.source.settings.host}:{self.source.settings.port} broke ({type(exc).__name__}).",
                "Retried automatically; if it persists, check the network.",
            )
        return RemoteFileError(f"The server failed on {name} ({exc}).", "Try again later.")

    @staticmethod
    def _alive(client: paramiko.SFTPClient) -> bool:
        channel = client.get_channel()
        return not channel.closed and channel.get_transport().is_active()

    def list(self) -> list[RemoteFile]:
        """Regular files in remote_dir (a link counts when it points to a regular file)."""
        folder = self.source.settings.remote_dir
        with self._client() as client:
            try:
                entries = client.listdir_attr(folder)
            except Exception as exc:  # noqa: BLE001 - classified below
                if getattr(exc, "errno", None) in (errno.ENOENT, errno.ENOTDIR):
                    raise ConfigError(
                        f"Remote folder {folder!r} does not exist on {self.source.settings.host}.",
                        "Set remote_dir to the folder IBKR delivers to (usually 'outgoing').",
                    ) from None
                raise self._error(exc, folder, client) from None
            files = []
            for attr in entries:
                name, mode = attr.filename, attr.st_mode or 0
                if stat.S_ISLNK(mode):
                    try:
                        attr = client.stat(posixpath.join(folder, name))
                    except Exception:  # noqa: BLE001 - a dangling or unreadable link is not a file
                        continue
                    mode = attr.st_mode or 0
                if stat.S_ISREG(mode):
                    files.append(RemoteFile(name, int(attr.st_size or 0), float(attr.st_mtime or 0)))
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
                        raise ConnectionFailure(f"The connection broke while downloading {name}.", "Retried automatically.")
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
        blocks = _pipelined(client, fh.handle, size, name)
        while True:
            try:
                data = next(blocks, None)
            except Exception as exc:  # noqa: BLE001 - the remote side only; local write errors stay OSError
                raise self._error(exc, name, client) from None
            if data is None:
                break
            out.write(data)
            written += len(data)
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
