"""sFTP diagnosis: key, DNS, TCP, SSH banner, host key, login, listing, one sample file.

Every step is a call into ``remote/net.py``, ``remote/ssh.py`` and ``SftpRemote``: the same
connect, authenticate, list and download code as ``fetch``, one step at a time.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import paramiko

from ..config import SourceConfig
from ..remote.hostkeys import fingerprint, known_keys
from ..remote.sftp import SftpRemote
from ..remote.ssh import Sha1Only, authenticate, load_private_key, negotiate, open_socket, verify_host_key, wait_banner
from .steps import Checklist, Degraded, Sample, connect_tcp, listing_detail, download_sample, pick_sample, resolve


def check_sftp(source: SourceConfig, cl: Checklist, stack: ExitStack, staging: Path) -> Sample | None:
    """Run every sFTP step for ``source``; returns the downloaded sample, if any."""
    key = cl.step("key", _load_key, source, blocking=False)
    if source.settings.proxy_command:
        sock = cl.step("proxy", lambda: (open_socket(source), f"proxy_command for {source.settings.host}:{source.settings.port}"))
    else:
        addresses = cl.step("dns", resolve, source) or []
        sock = cl.step("tcp", connect_tcp, source, addresses)
        if sock is not None:
            stack.callback(sock.close)
        cl.step("banner", _banner, source, sock)
    transport = cl.step("hostkey", _handshake, source, sock)
    if transport is not None:
        stack.callback(transport.close)
    if key is None and not cl.blocked:
        cl.skip("auth", "the private key did not load")
        cl.blocked = True
    transport = cl.step("auth", _login, source, transport, key, stack)
    remote = None
    if transport is not None and not cl.blocked:
        remote = SftpRemote(source, transport, key)
        stack.callback(remote.close)
    files = cl.step("list", _list, source, remote)
    if files is None:
        return None
    chosen = pick_sample(files)
    if chosen is None:
        return cl.skip("sample", f"no encrypted file in {source.settings.remote_dir} to test")
    return cl.step("sample", download_sample, source, remote, chosen, staging)


def _load_key(source: SourceConfig) -> tuple[paramiko.PKey, str]:
    key = load_private_key(source)
    bits = f" {key.get_bits()} bits" if key.get_bits() else ""
    return key, f"{Path(str(source.settings.key_file)).name}: {key.get_name()}{bits} {fingerprint(key)}"


def _banner(source: SourceConfig, sock) -> tuple[None, str]:
    return None, wait_banner(source, sock)


def _handshake(source: SourceConfig, sock) -> tuple[paramiko.Transport, str]:
    known = known_keys(source)
    transport = negotiate(source, sock, known)
    key = transport.get_remote_server_key()
    verify_host_key(source, transport, known)  # closes it before any authentication when refused
    return transport, f"{key.get_name()} {fingerprint(key)} matches {source.settings.known_hosts}"


def _login(source: SourceConfig, transport: paramiko.Transport, key: paramiko.PKey,
           stack: ExitStack) -> tuple[paramiko.Transport, str]:
    done = f"user {source.settings.username} logged in with {fingerprint(key)}"
    try:
        authenticate(source, transport, key)
    except Sha1Only as exc:  # say what to change, and use the legacy login to check the rest
        stack.callback(exc.transport.close)
        raise Degraded(exc, exc.transport, done + " using ssh-rsa (SHA-1)") from None
    return transport, done


def _list(source: SourceConfig, remote: SftpRemote) -> tuple[list, str]:
    files = remote.list()
    return files, listing_detail(source.settings.remote_dir, files)
