"""FTP / FTPS diagnosis: DNS, TCP, welcome, TLS, login, folder, passive data channel, listing, sample.

Every step is a call into ``remote/net.py``, ``remote/ftpconn.py`` and ``FtpRemote``: the same
connect, log-in, list and download code as ``fetch``, one step at a time.
"""

from __future__ import annotations

import ftplib
import socket
from contextlib import ExitStack
from pathlib import Path

from ..config import SourceConfig
from ..remote.ftp import FtpRemote
from ..remote.ftpconn import change_dir, login, secure, welcome
from .steps import Checklist, Sample, connect_tcp, listing_detail, download_sample, pick_sample, resolve


def check_ftp(source: SourceConfig, cl: Checklist, stack: ExitStack, staging: Path) -> Sample | None:
    """Run every FTP step for ``source``; returns the downloaded sample, if any."""
    addresses = cl.step("dns", resolve, source) or []
    sock = cl.step("tcp", connect_tcp, source, addresses)
    if sock is not None:
        stack.callback(sock.close)
    ftp = cl.step("welcome", _welcome, source, sock)
    if ftp is not None:
        stack.callback(ftp.close)
    if source.settings.tls:
        cl.step("tls", _tls, source, ftp)
    cl.step("login", _login, source, ftp)
    cl.step("folder", _cwd, source, ftp)
    remote = None
    if ftp is not None and not cl.blocked:
        remote = FtpRemote(source, ftp)
        stack.callback(remote.close)
    files = cl.step("data", _data, source, remote, ftp)
    files = cl.step("list", lambda: (files, listing_detail(source.settings.remote_dir, files)))
    if files is None:
        return None
    chosen = pick_sample(files)
    if chosen is None:
        return cl.skip("sample", f"no encrypted file in {source.settings.remote_dir} to test")
    return cl.step("sample", download_sample, source, remote, chosen, staging)


def _welcome(source: SourceConfig, sock: socket.socket):
    ftp = welcome(source, sock)
    return ftp, ftp.welcome.replace("\n", " ")[:80]


def _tls(source: SourceConfig, ftp: ftplib.FTP_TLS):
    secure(source, ftp)
    cert = ftp.sock.getpeercert() or {}
    subject = dict(part[0] for part in cert.get("subject", ()) if part)
    return None, f"{ftp.sock.version()}, certificate verified ({subject.get('commonName', 'no common name')})"


def _login(source: SourceConfig, ftp: ftplib.FTP):
    login(ftp, source, source.settings.password.get() if source.settings.password else "")
    return None, f"user {source.settings.username}" + (", data channel protected (PROT P)" if source.settings.tls else "")


def _cwd(source: SourceConfig, ftp: ftplib.FTP):
    change_dir(ftp, source)
    return None, source.settings.remote_dir


def _data(source: SourceConfig, remote: FtpRemote, ftp: ftplib.FTP):
    """Open a data channel by fetching the listing (fetch's own list()); where a blocked passive port shows."""
    opened: list[tuple[str, int]] = []
    pasv = ftp.makepasv

    def record() -> tuple[str, int]:
        opened.append(pasv())
        return opened[-1]

    ftp.makepasv = record  # ntransfercmd asks here for the data address: note it for the report
    try:
        files = remote.list()
    finally:
        del ftp.makepasv
    mode = f"passive to {opened[-1][0]}:{opened[-1][1]}" if opened else "active"
    return files, f"{mode}, {'MLSD' if remote.uses_mlsd else 'NLST'} received"
