"""sFTP diagnosis: key, DNS, TCP, SSH banner, host key, login, listing, one sample file."""

from __future__ import annotations

import errno
import posixpath
import socket
import stat
import time
from contextlib import ExitStack
from pathlib import Path

import paramiko

from ..config import SourceConfig
from ..errors import AuthenticationError, ConfigError, ConnectionFailure, HostKeyError, RemoteFileError
from ..files import create_private
from ..remote.hostkeys import check_host_key, fingerprint, host_id, known_keys
from ..remote.ssh import authenticate, load_private_key, negotiate, open_socket
from ..remote.legacy import SHA2_RSA, signing_key, wants_sha1
from .steps import Checklist, Degraded, Sample, connect_tcp, count_detail, pick_sample, resolve


def check_sftp(source: SourceConfig, cl: Checklist, stack: ExitStack, staging: Path) -> Sample | None:
    """Run every sFTP step for ``source``; returns the downloaded sample, if any."""
    key = cl.step("key", _load_key, source, blocking=False)
    addresses: list[str] = []
    if source.settings.proxy_command:
        sock = cl.step("proxy", lambda: (open_socket(source), f"proxy_command for {source.settings.host}:{source.settings.port}"))
    else:
        addresses = cl.step("dns", resolve, source) or []
        sock = cl.step("tcp", connect_tcp, source, addresses)
        if sock is not None:
            stack.callback(sock.close)
        cl.step("banner", read_banner, source, sock)
    transport = cl.step("hostkey", _handshake, source, sock)
    if transport is not None:
        stack.callback(transport.close)
    if key is None and not cl.blocked:
        cl.skip("auth", "the private key did not load")
        cl.blocked = True
    transport = cl.step("auth", _login, source, transport, key, addresses, stack)
    listed = cl.step("list", _list, source, transport)
    if listed is None:
        return None
    client, files = listed
    chosen = pick_sample([(name, size) for name, size in files])
    if chosen is None:
        return cl.skip("sample", f"no encrypted file in {source.settings.remote_dir} to test")
    return cl.step("sample", _download, source, client, chosen, staging)


def _load_key(source: SourceConfig) -> tuple[paramiko.PKey, str]:
    key = load_private_key(source)
    bits = f" {key.get_bits()} bits" if key.get_bits() else ""
    return key, f"{Path(str(source.settings.key_file)).name}: {key.get_name()}{bits} {fingerprint(key)}"


def read_banner(source: SourceConfig, sock: socket.socket) -> tuple[None, str]:
    """Wait for the server's SSH banner without consuming it (paramiko reads it next)."""
    where = f"{source.settings.host}:{source.settings.port}"
    deadline = time.monotonic() + source.timeout
    while True:
        remaining = deadline - time.monotonic()
        data = b""
        if remaining > 0:
            sock.settimeout(remaining)
            try:
                data = sock.recv(4096, socket.MSG_PEEK)
            except TimeoutError:
                remaining = 0
        if remaining <= 0:
            raise ConnectionFailure(
                f"{where} accepted the TCP connection but sent no SSH banner within {source.timeout:g} s.",
                "Something other than an SSH server holds this port, or a firewall or proxy on the path holds the "
                "connection: check host and port (IBKR: xfer.interactivebrokers.com port 32).",
            )
        if not data:
            raise ConnectionFailure(
                f"{where} closed the connection before sending an SSH banner.",
                "The server turned this client away: IBKR does that for public IPs it has not whitelisted; "
                "ask IBKR's Reporting Integration team to whitelist yours, and check host and port.",
            )
        lines = data.split(b"\n")[:-1]  # complete lines only
        for line in lines:
            if line.startswith(b"SSH-"):
                sock.settimeout(source.timeout)
                return None, line.decode("ascii", "replace").strip()[:80]
        if (lines and lines[0][:3].isdigit()) or len(data) >= 4096:
            said = lines[0].decode("ascii", "replace").strip()[:60] if lines else "binary data"
            raise ConnectionFailure(
                f"{where} answered, but not as an SSH server (it said {said!r}).",
                "Wrong port: IBKR's sFTP server listens on port 32 (port 21 is its FTP server, kind = \"ftp\").",
            )
        time.sleep(0.01)  # partial banner: peeking again at once would spin


def _handshake(source: SourceConfig, sock) -> tuple[paramiko.Transport, str]:
    known = known_keys(source)
    transport = negotiate(source, sock, known)
    key = transport.get_remote_server_key()
    shown = f"{key.get_name()} {fingerprint(key)}"
    try:
        if not known:
            raise HostKeyError(
                f"Host key for {host_id(source.settings.host, source.settings.port)} is not in {source.settings.known_hosts} "
                f"(the server shows {shown}).",
                f"Verify this fingerprint with IBKR, then run: ibreports trust-host --source {source.name} "
                f"--fingerprint {fingerprint(key)}",
            )
        check_host_key(source, key, known)
    except HostKeyError:
        transport.close()  # before any authentication
        raise
    return transport, f"{shown} matches {source.settings.known_hosts}"


def _login(source, transport, key, addresses, stack: ExitStack) -> tuple[paramiko.Transport, str]:
    done = f"user {source.settings.username} logged in with {fingerprint(key)}"
    try:
        authenticate(source, transport, signing_key(key, source.settings.disabled_algorithms))
        return transport, done
    except AuthenticationError:
        if not isinstance(key, paramiko.RSAKey) or wants_sha1(source.settings.disabled_algorithms) or not addresses:
            raise
        legacy = _legacy_login(source, key, addresses[0])
        if legacy is None:
            raise
    stack.callback(legacy.close)
    raise Degraded(
        AuthenticationError(
            f"The server refused our key with SHA-2 signatures (rsa-sha2-256/512) but accepted it with the old "
            f"ssh-rsa (SHA-1) signature for user {source.settings.username}.",
            "Add to this source in the config: disabled_algorithms = { pubkeys = [\"rsa-sha2-256\", "
            "\"rsa-sha2-512\"] } (ssh-rsa signatures are weaker: also ask IBKR to accept rsa-sha2-256).",
        ),
        legacy, done + " using ssh-rsa (SHA-1)",
    )


def _legacy_login(source: SourceConfig, key: paramiko.RSAKey, ip: str) -> paramiko.Transport | None:
    """A second login offering only ssh-rsa signatures; the transport when the server accepts it."""
    disabled = dict(source.settings.disabled_algorithms or {})
    disabled["pubkeys"] = sorted({*disabled.get("pubkeys", []), *SHA2_RSA})
    try:
        sock = socket.create_connection((ip, source.settings.port), timeout=source.timeout)
        known = known_keys(source)
        transport = negotiate(source, sock, known, disabled)
    except (OSError, ConnectionFailure):
        return None
    try:
        check_host_key(source, transport.get_remote_server_key(), known)
        authenticate(source, transport, signing_key(key, disabled))
        return transport
    except (HostKeyError, AuthenticationError, ConnectionFailure):
        transport.close()
        return None


def _list(source: SourceConfig, transport: paramiko.Transport):
    try:
        client = paramiko.SFTPClient.from_transport(transport)
        client.get_channel().settimeout(source.timeout)
        entries = client.listdir_attr(source.settings.remote_dir)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ConfigError(
                f"Remote folder {source.settings.remote_dir!r} does not exist on {source.settings.host}.",
                "Set remote_dir to the folder IBKR delivers to (usually 'outgoing').",
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise RemoteFileError(
                f"Permission denied listing {source.settings.remote_dir!r} on {source.settings.host}.",
                "Ask IBKR to check the folder's permissions for this username.",
            ) from None
        raise ConnectionFailure(f"Listing {source.settings.remote_dir!r} failed ({exc}).", "Check the network; try again.") from None
    except (paramiko.SSHException, EOFError) as exc:
        raise ConnectionFailure(f"The server refused an SFTP channel ({exc}).", "Try again; if it persists, ask IBKR.") from None
    files = [(e.filename, int(e.st_size or 0)) for e in entries if stat.S_ISREG(e.st_mode or 0)]
    return (client, files), count_detail(source.settings.remote_dir, [name for name, _ in files])


def _download(source: SourceConfig, client: paramiko.SFTPClient, chosen: tuple[str, int], staging: Path):
    name, size = chosen
    dest = staging / f"{source.name}.sample"
    try:
        with open(create_private(dest), "wb") as out:
            client.getfo(posixpath.join(source.settings.remote_dir, name), out)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise RemoteFileError(f"Downloading the sample {name} failed ({exc}).", "Try again.") from None
    return Sample(source.name, name, dest), f"{name} ({size} bytes) for the PGP check"
