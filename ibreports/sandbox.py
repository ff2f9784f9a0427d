"""A small in-process sFTP server: the `demo` target and a fault injector for tests.

It serves the files under ``root`` read-only (plus remove) to one user who must
authenticate with one public key, like IBKR's server. Fault hooks simulate what a
real server rarely does on demand: hostile names in the listing, connections
dropped mid-file, files still growing, sizes that lie.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Callable

import paramiko
from paramiko import SFTPAttributes, SFTPHandle, SFTPServer, SFTPServerInterface
from paramiko.sftp import SFTP_FAILURE, SFTP_NO_SUCH_FILE, SFTP_OP_UNSUPPORTED, SFTP_PERMISSION_DENIED

MAX_CONNECTIONS = 8  # bounded: each connection costs a transport thread plus one per channel
LOG_CHANNEL = "ibreports.sandbox.ssh"
# A client hanging up abruptly is routine for a test server, not an error worth printing.
logging.getLogger(LOG_CHANNEL).setLevel(logging.CRITICAL)


def file_attr(name: str, size: int = 0, mtime: float | None = None) -> SFTPAttributes:
    """A listing entry for a regular file (for ``listing_override``)."""
    attr = SFTPAttributes()
    attr.filename = name
    attr.st_size = size
    attr.st_mode = stat.S_IFREG | 0o644
    attr.st_uid = attr.st_gid = 0
    attr.st_mtime = attr.st_atime = int(time.time() if mtime is None else mtime)
    return attr


class SandboxServer:
    """SSH/SFTP server on 127.0.0.1 and a free port, served from background threads.

    Args:
        root: folder served as ``/`` (deliveries usually go in ``root/outgoing``).
        host_key: the server's key; a fresh ECDSA key when omitted.
        authorized_key: the only public key accepted (public-key auth only).
        username: the only user accepted.

    Fault hooks (attributes, may be changed while running):
        listing_override: callable returning the SFTPAttributes to list for any folder.
        drop_after_bytes: cut the connection once a read reaches this offset in a file.
        drop_limit: how many connections to cut that way (None: every time).
        grow_on_open: {name: bytes} appended to the file each time it is opened.
        lie_about_size: {name: size} reported in listings and stat instead of the truth.
        max_read: answer every read with at most this many bytes (servers that cap reads).
        read_delay: seconds to wait before answering each read (a trickling server).
        endless_listing: list every folder as an endless stream of file entries.
    """

    host = "127.0.0.1"

    def __init__(self, root: Path, host_key: paramiko.PKey | None = None,
                 authorized_key: paramiko.PKey | None = None, username: str = "demo") -> None:
        self.root = Path(root).resolve()
        self.host_key = host_key or paramiko.ECDSAKey.generate(bits=256)
        self.authorized_key = authorized_key
        self.username = username
        self.listing_override: Callable[[], list[SFTPAttributes]] | None = None
        self.drop_after_bytes: int | None = None
        self.drop_limit: int | None = None
        self.grow_on_open: dict[str, bytes] = {}
        self.lie_about_size: dict[str, int] = {}
        self.max_read: int | None = None
        self.read_delay: float | None = None
        self.endless_listing = False
        self.drops = 0  # connections cut by drop_after_bytes so far
        self.logins = 0  # successful authentications so far
        self.port = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._transports: list[paramiko.Transport] = []
        self._dropped: set[socket.socket] = set()  # connections already cut

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> "SandboxServer":
        """Bind a free loopback port and start accepting connections."""
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.2)  # lets the accept loop notice stop() quickly
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="sandbox-accept", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection; wait for their threads."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            transports, self._transports = self._transports, []
        for transport in transports:
            transport.close()
        for transport in transports:
            transport.join(5)

    def __enter__(self) -> "SandboxServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- pinning, like the real server ----------------------------------------------------

    def known_hosts_line(self) -> str:
        """The known_hosts entry for this server: ``[127.0.0.1]:port keytype base64``."""
        return f"[127.0.0.1]:{self.port} {self.host_key.get_name()} {self.host_key.get_base64()}"

    def write_known_hosts(self, path: Path) -> Path:
        """Write (replace) ``path`` with this server's pinned host key."""
        Path(path).write_text(self.known_hosts_line() + "\n", encoding="ascii")
        return Path(path)

    def fingerprint(self) -> str:
        """The host key fingerprint as OpenSSH shows it (``SHA256:...``)."""
        digest = hashlib.sha256(self.host_key.asbytes()).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    # -- internals ----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            with self._lock:
                self._transports = [t for t in self._transports if t.is_active()]
                if len(self._transports) >= MAX_CONNECTIONS:
                    sock.close()
                    continue
                try:
                    transport = self._serve(sock)
                except (paramiko.SSHException, OSError, EOFError):
                    sock.close()
                    continue
                self._transports.append(transport)

    def _serve(self, sock: socket.socket) -> paramiko.Transport:
        sock.settimeout(None)
        transport = paramiko.Transport(sock)
        transport.set_log_channel(LOG_CHANNEL)
        transport.add_server_key(self.host_key)
        transport.set_subsystem_handler("sftp", SFTPServer, _SandboxSftp, self, sock)
        transport.start_server(server=_Login(self))  # negotiates in the transport's own thread
        return transport

    def _local(self, path: str) -> Path:
        """Map an SFTP path to a file under root; never outside it."""
        rel = os.path.normpath("/" + path).lstrip("/")
        local = (self.root / rel).resolve()
        if local != self.root and self.root not in local.parents:
            raise PermissionError(errno.EACCES, "outside the served folder")
        return local

    def _should_drop(self, sock: socket.socket) -> bool:
        """True when this connection is (now) to be cut; counts each connection once."""
        with self._lock:
            if sock in self._dropped:
                return True
            if self.drop_limit is not None and self.drops >= self.drop_limit:
                return False
            self._dropped.add(sock)
            self.drops += 1
            return True


class _Login(paramiko.ServerInterface):
    """Public-key authentication for one user and one key; session channels only."""

    def __init__(self, sandbox: SandboxServer) -> None:
        self.sandbox = sandbox

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        wanted = self.sandbox.authorized_key
        if (username == self.sandbox.username and wanted is not None
                and key.get_name() == wanted.get_name() and key.asbytes() == wanted.asbytes()):
            with self.sandbox._lock:
                self.sandbox.logins += 1
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class _SandboxSftp(SFTPServerInterface):
    """Read-only SFTP over the sandbox root, plus remove."""

    def __init__(self, server: _Login, sandbox: SandboxServer, sock: socket.socket, *args, **kwargs) -> None:
        super().__init__(server, *args, **kwargs)
        self.sandbox = sandbox
        self.sock = sock

    def _attr(self, local: Path, name: str) -> SFTPAttributes:
        attr = SFTPAttributes.from_stat(local.stat(), name)
        if stat.S_ISREG(attr.st_mode) and name in self.sandbox.lie_about_size:
            attr.st_size = self.sandbox.lie_about_size[name]
        return attr

    def list_folder(self, path: str):
        if self.sandbox.endless_listing:
            return _EndlessFolder()
        if self.sandbox.listing_override is not None:
            return list(self.sandbox.listing_override())
        try:
            folder = self.sandbox._local(path)
            return [self._attr(entry, entry.name) for entry in sorted(folder.iterdir())]
        except OSError as exc:
            return SFTPServer.convert_errno(exc.errno)

    def stat(self, path: str):
        try:
            local = self.sandbox._local(path)
            return self._attr(local, local.name)
        except OSError as exc:
            return SFTPServer.convert_errno(exc.errno)

    lstat = stat

    def open(self, path: str, flags: int, attr: SFTPAttributes):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            return SFTP_PERMISSION_DENIED  # IBKR's outgoing folder is read-only to us
        try:
            local = self.sandbox._local(path)
            extra = self.sandbox.grow_on_open.get(local.name)
            if extra:
                with open(local, "ab") as fh:
                    fh.write(extra)
            handle = _Handle(open(local, "rb"), self)
        except OSError as exc:
            return SFTPServer.convert_errno(exc.errno)
        handle.filename = str(local)
        return handle

    def remove(self, path: str) -> int:
        try:
            local = self.sandbox._local(path)
            if not local.is_file():
                return SFTP_NO_SUCH_FILE
            local.unlink()
        except OSError as exc:
            return SFTPServer.convert_errno(exc.errno)
        return paramiko.SFTP_OK

    def canonicalize(self, path: str) -> str:
        return os.path.normpath("/" + path)

    def rename(self, oldpath, newpath):  # read-only server
        return SFTP_OP_UNSUPPORTED

    def mkdir(self, path, attr):
        return SFTP_OP_UNSUPPORTED

    def rmdir(self, path):
        return SFTP_OP_UNSUPPORTED


class _EndlessFolder(list):
    """A folder listing without end: paramiko's server takes ``[:16]`` and then ``[16:]`` of it."""

    def __init__(self) -> None:
        super().__init__()
        self.served = 0

    def __getitem__(self, part: slice):
        if part.start:  # the rest: still endless
            return self
        first, self.served = self.served, self.served + 16
        return [file_attr(f"U1234567.Endless.{n:09d}.xml.pgp", 1) for n in range(first, first + 16)]


class _Handle(SFTPHandle):
    """An open file; applies drop_after_bytes on reads."""

    def __init__(self, fh, sftp: _SandboxSftp) -> None:
        super().__init__(os.O_RDONLY)
        self.readfile = fh
        self.sftp = sftp

    def read(self, offset: int, length: int):
        limit = self.sftp.sandbox.drop_after_bytes
        if limit is not None:
            if offset >= limit and self.sftp.sandbox._should_drop(self.sftp.sock):
                # Cut the TCP connection under the transport, like a flaky network would.
                try:
                    self.sftp.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return SFTP_FAILURE
            if offset < limit:
                length = min(length, limit - offset)  # a short read: the client asks again
        if self.sftp.sandbox.max_read:
            length = min(length, self.sftp.sandbox.max_read)
        if self.sftp.sandbox.read_delay:
            time.sleep(self.sftp.sandbox.read_delay)
        try:
            self.readfile.seek(offset)
            return self.readfile.read(length)
        except OSError as exc:
            return SFTPServer.convert_errno(exc.errno)

    def stat(self):
        try:
            return self.sftp._attr(Path(self.filename), Path(self.filename).name)
        except OSError as exc:
            return SFTPServer.convert_errno(exc.errno)
