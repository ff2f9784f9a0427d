"""FTP / FTPS diagnosis: DNS, TCP, welcome, TLS, login, folder, passive data channel, listing, sample."""

from __future__ import annotations

import ftplib
import socket
import ssl
from contextlib import ExitStack
from pathlib import Path

from ..config import SourceConfig
from ..errors import ConnectionFailure, RemoteFileError
from ..files import create_private
from ..remote.ftpconn import (
    NETWORK_ERRORS, DataChannelError, PassiveFTP, PassiveFTPS, certificate_error, change_dir, login, supports_mlsd,
)
from .steps import Checklist, Sample, connect_tcp, count_detail, pick_sample, resolve


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
    listing = cl.step("data", _data, source, ftp)
    files = cl.step("list", _list, source, ftp, listing)
    if files is None:
        return None
    chosen = pick_sample(files)
    if chosen is None:
        return cl.skip("sample", f"no encrypted file in {source.settings.remote_dir} to test")
    return cl.step("sample", _download, source, ftp, chosen, staging)


def _welcome(source: SourceConfig, sock: socket.socket):
    """Hand the connected socket to ftplib and read the greeting (what FTP.connect does)."""
    ftp = PassiveFTPS(context=_context(source), timeout=source.timeout) if source.settings.tls else PassiveFTP(timeout=source.timeout)
    ftp.host, ftp.port, ftp.sock, ftp.af = source.settings.host, source.settings.port, sock, sock.family
    ftp.file = sock.makefile("r", encoding=ftp.encoding)
    where = f"{source.settings.host}:{source.settings.port}"
    try:
        ftp.welcome = ftp.getresp()
    except TimeoutError:
        raise ConnectionFailure(
            f"{where} accepted the TCP connection but sent no FTP greeting within {source.timeout:g} s.",
            "Something other than an FTP server holds this port, or a firewall holds the connection: check host "
            "and port (IBKR: ftp2.interactivebrokers.com port 21).",
        ) from None
    except ftplib.error_temp as exc:
        raise ConnectionFailure(f"{where} turned us away ({exc}).", "Try again later; if it persists, ask IBKR.") from None
    except (ftplib.error_proto, ftplib.error_reply, ftplib.error_perm, UnicodeDecodeError) as exc:
        raise ConnectionFailure(
            f"{where} answered, but not as an FTP server ({str(exc)[:60]!r}).",
            "Wrong port: IBKR's FTP server listens on port 21 (port 32 is its sFTP server, kind = \"sftp\").",
        ) from None
    except (OSError, EOFError) as exc:
        raise ConnectionFailure(
            f"{where} closed the connection before greeting ({type(exc).__name__}).",
            "IBKR turns away public IPs it has not whitelisted: ask IBKR to whitelist yours; check host and port.",
        ) from None
    return ftp, ftp.welcome.replace("\n", " ")[:80]


def _context(source: SourceConfig) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(source.settings.ca_file) if source.settings.ca_file else None)


def _tls(source: SourceConfig, ftp: ftplib.FTP_TLS):
    where = f"{source.settings.host}:{source.settings.port}"
    try:
        ftp.auth()
    except ftplib.error_perm as exc:
        raise ConnectionFailure(
            f"{where} does not offer FTPS (AUTH TLS refused: {exc}).", "Set tls = false for this source, or check host and port."
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise certificate_error(where, exc) from None
    except (*NETWORK_ERRORS, ssl.SSLError) as exc:
        raise ConnectionFailure(f"The TLS handshake with {where} failed ({exc}).", "Check host, port and tls.") from None
    cert = ftp.sock.getpeercert() or {}
    subject = dict(part[0] for part in cert.get("subject", ()) if part)
    return None, f"{ftp.sock.version()}, certificate verified ({subject.get('commonName', 'no common name')})"


def _login(source: SourceConfig, ftp: ftplib.FTP):
    try:
        login(ftp, source, source.settings.password.get() if source.settings.password else "")
    except (*NETWORK_ERRORS, ssl.SSLError) as exc:
        raise ConnectionFailure(f"The connection broke during login ({type(exc).__name__}).", "Try again.") from None
    return None, f"user {source.settings.username}" + (", data channel protected (PROT P)" if source.settings.tls else "")


def _cwd(source: SourceConfig, ftp: ftplib.FTP):
    try:
        change_dir(ftp, source)
    except (*NETWORK_ERRORS, ssl.SSLError) as exc:
        raise ConnectionFailure(f"The connection broke ({type(exc).__name__}).", "Try again.") from None
    return None, source.settings.remote_dir


def _data(source: SourceConfig, ftp: ftplib.FTP):
    """Open a data channel by fetching the listing; the one place a blocked passive port shows."""
    opened: list[tuple[str, int]] = []
    pasv = ftp.makepasv

    def record() -> tuple[str, int]:
        opened.append(pasv())
        return opened[-1]

    ftp.makepasv = record  # ntransfercmd asks here for the data address: note it for the report
    mlsd = supports_mlsd(ftp)
    try:
        listing = ("mlsd", list(ftp.mlsd())) if mlsd else ("nlst", _nlst(ftp))
    except DataChannelError as exc:
        remedy = (
            "Passive mode: a firewall must allow outbound connections to the server's passive data ports "
            "(high ports above 1024), not only to port 21; allow them." if source.settings.passive else
            "Active mode needs the server to connect back to you, which firewalls and NAT block: set passive = true."
        )
        raise ConnectionFailure(f"Cannot open the FTP data connection ({exc}).", remedy) from None
    except ftplib.error_perm as exc:
        raise RemoteFileError(
            f"The server refused to list {source.settings.remote_dir!r} ({exc}).", "Ask IBKR to check the folder's permissions."
        ) from None
    except (*NETWORK_ERRORS, ssl.SSLError) as exc:
        raise ConnectionFailure(f"The data transfer broke ({type(exc).__name__}: {exc}).", "Try again.") from None
    finally:
        del ftp.makepasv
    mode = f"passive to {opened[-1][0]}:{opened[-1][1]}" if opened else "active"
    return listing, f"{mode}, {'MLSD' if mlsd else 'NLST'} received"


def _nlst(ftp: ftplib.FTP) -> list[str]:
    try:
        return ftp.nlst()
    except ftplib.error_perm as exc:
        if str(exc)[:3] in ("450", "550"):  # some servers answer an empty folder so
            return []
        raise


def _list(source: SourceConfig, ftp: ftplib.FTP, listing) -> tuple[list[tuple[str, int]], str]:
    kind, entries = listing
    if kind == "mlsd":
        files = [(n, int(f.get("size", 0))) for n, f in entries if f.get("type", "").lower() == "file"]
    else:
        files = []
        try:
            ftp.voidcmd("TYPE I")  # SIZE needs binary mode
            for name in entries:
                try:
                    files.append((name, int(ftp.size(name) or 0)))
                except ftplib.error_perm:
                    continue  # folders have no size
        except (*NETWORK_ERRORS, ssl.SSLError) as exc:
            raise ConnectionFailure(f"The connection broke ({type(exc).__name__}).", "Try again.") from None
    return files, count_detail(source.settings.remote_dir, [name for name, _ in files])


def _download(source: SourceConfig, ftp: ftplib.FTP, chosen: tuple[str, int], staging: Path):
    name, size = chosen
    dest = staging / f"{source.name}.sample"
    try:
        with open(create_private(dest), "wb") as out:
            ftp.retrbinary(f"RETR {name}", out.write)
    except (ftplib.error_perm, *NETWORK_ERRORS, ssl.SSLError) as exc:
        raise RemoteFileError(f"Downloading the sample {name} failed ({exc}).", "Try again.") from None
    return Sample(source.name, name, dest), f"{name} ({size} bytes) for the PGP check"
