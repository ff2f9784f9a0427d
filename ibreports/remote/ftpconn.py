"""FTP / FTPS session set-up: connect, TLS with a verified certificate, login, passive data channels.

Each step raises one of our errors with a remedy, so ``doctor`` can run them one at a time.
"""

from __future__ import annotations

import ftplib
import re
import socket
import ssl

from ..config import SourceConfig
from ..errors import AuthenticationError, CertificateError, ConfigError, ConnectionFailure, IbreportsError
from . import net

NETWORK_ERRORS = (OSError, EOFError, ftplib.error_temp, ftplib.error_reply, ftplib.error_proto)
# OpenSSL verify codes (X509_V_ERR_*) that each have their own remedy.
EXPIRED, SELF_SIGNED, SELF_SIGNED_IN_CHAIN, UNKNOWN_ISSUER, HOSTNAME_MISMATCH, IP_MISMATCH = 10, 18, 19, 20, 62, 64
# A login refused because the control channel is plain, not because of the password: vsftpd "530 Non-anonymous
# sessions must use encryption.", pyftpdlib "550 SSL/TLS required on the control channel.", ProFTPD "550 SSL/TLS
# required on the control channel", IIS "534 Policy requires SSL.", Pure-FTPd "530 Sorry, cleartext sessions ... are not accepted".
TLS_REQUIRED = re.compile(r"must use encryption|cleartext sessions|(ssl|tls)\b.*\brequired|requires? (ssl|tls)|must use (ssl|tls)", re.I)


class DataChannelError(OSError):
    """The data connection could not be opened (passive port blocked, active mode behind NAT)."""


class _PassiveMixin:
    """ntransfercmd that tells a blocked data channel apart and reuses the TLS session."""

    trust_server_pasv_ipv4_address = False  # connect data channels to the control peer, never to the PASV IP

    def ntransfercmd(self, cmd, rest=None):
        if not self.passiveserver:
            try:
                conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
            except (TimeoutError, ConnectionError) as exc:
                raise DataChannelError(f"the server did not connect back ({exc})") from None
            return self._wrap(conn), size
        host, port = self.makepasv()
        try:
            conn = socket.create_connection((host, port), self.timeout, source_address=self.source_address)
        except OSError as exc:
            raise DataChannelError(f"{host}:{port}: {exc.strerror or exc}") from None
        try:
            if rest is not None:
                self.sendcmd(f"REST {rest}")
            resp = self.sendcmd(cmd)
            if resp[0] == "2":  # some servers send a 200 before the 150
                resp = self.getresp()
            if resp[0] != "1":
                raise ftplib.error_reply(resp)
            conn = self._wrap(conn)
        except BaseException:
            conn.close()
            raise
        return conn, (ftplib.parse150(resp) if resp[:3] == "150" else None)

    def _wrap(self, conn):
        return conn


class PassiveFTP(_PassiveMixin, ftplib.FTP):
    pass


class PassiveFTPS(_PassiveMixin, ftplib.FTP_TLS):
    def _wrap(self, conn):
        if not self._prot_p:
            return conn
        return self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)


def ftp_failure(exc: BaseException, source: SourceConfig, during: str) -> IbreportsError:
    """The error table of the FTP backend: ftplib, ssl and socket errors -> our errors and remedies.

    ``error_perm`` replies mean different things per command; callers handle them before this.
    """
    at = net.where(source)
    if isinstance(exc, IbreportsError):
        return exc
    if isinstance(exc, DataChannelError):
        remedy = (
            "Passive mode: a firewall must allow outbound connections to the server's passive data ports "
            "(high ports above 1024), not only to port 21; allow them." if source.settings.passive else
            "Active mode needs the server to connect back to you, which firewalls and NAT block: set passive = true."
        )
        return ConnectionFailure(f"Cannot open the FTP data connection for {during} ({exc}).", remedy)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return certificate_error(source, exc)
    if isinstance(exc, ssl.SSLError):
        return ConnectionFailure(
            f"The TLS handshake with {at} failed during {during} ({exc.reason or exc}).",
            "Check host, port and tls (explicit FTPS, AUTH TLS, on the FTP port: 21 for IBKR).",
        )
    if isinstance(exc, TimeoutError):
        return net.idle(source, during)
    if isinstance(exc, ftplib.error_temp):
        return ConnectionFailure(f"{at} turned us away during {during} ({str(exc)[:80]}).", net.TRY_LATER)
    if isinstance(exc, (ftplib.error_proto, ftplib.error_reply, UnicodeDecodeError)):
        return ConnectionFailure(
            f"{at} answered {during} with something an FTP server does not say ({str(exc)[:60]!r}).",
            f"Check host and port ({net.server_hint(source)}).",
        )
    return net.broke(source, during, exc)


def certificate_error(source: SourceConfig, exc: ssl.SSLCertVerificationError) -> CertificateError:
    """Like a host key: an unverifiable certificate is refused, never retried; the remedy fits the cause."""
    at = net.where(source)
    cause = f"The certificate of the FTPS server {at} could not be verified ({exc.verify_message})."
    code = exc.verify_code
    pin = (
        f"openssl s_client -connect {at} -starttls ftp -showcerts </dev/null | openssl x509 > keys/ftps_server.pem"
    )
    if code in (HOSTNAME_MISMATCH, IP_MISMATCH):
        return CertificateError(
            cause,
            f"The certificate is trusted but issued for another name than host = \"{source.settings.host}\": set host to a "
            f"name the certificate lists (openssl s_client -connect {at} -starttls ftp </dev/null | openssl x509 "
            "-noout -ext subjectAltName); ca_file cannot fix a name mismatch.",
        )
    if code == EXPIRED:
        return CertificateError(cause, "The server's certificate has expired: ask IBKR; do not connect until it is renewed.")
    if source.settings.ca_file:
        return CertificateError(
            cause,
            f"ca_file {source.settings.ca_file} does not hold this server's certificate or the CA that signed it: the "
            "server's certificate changed or ca_file is the wrong file. Ask IBKR before replacing it; to pin the "
            f"certificate it shows now: {pin}",
        )
    if code in (SELF_SIGNED, SELF_SIGNED_IN_CHAIN, UNKNOWN_ISSUER):
        return CertificateError(
            cause,
            "The server's own (self-signed or privately signed) certificate can be pinned as ca_file: if this really "
            f"is the right server (compare its fingerprint with IBKR's), save it with: {pin} and set "
            "ca_file = \"keys/ftps_server.pem\"; otherwise do not connect.",
        )
    return CertificateError(
        cause,
        "If this really is the right server, set ca_file to the certificate of the CA that signed it; "
        "otherwise do not connect.",
    )


def welcome(source: SourceConfig, sock: socket.socket) -> ftplib.FTP:
    """Hand the connected socket to ftplib and read the greeting (what FTP.connect does).

    The greeting is awaited first with a peek, so a server that accepts TCP and never
    speaks fails with the sentence doctor prints for it, in fetch and status alike.
    """
    if source.settings.tls:
        context = ssl.create_default_context(cafile=str(source.settings.ca_file) if source.settings.ca_file else None)
        ftp: ftplib.FTP = PassiveFTPS(context=context, timeout=source.timeout)
    else:
        ftp = PassiveFTP(timeout=source.timeout)
    ftp.host, ftp.port, ftp.sock, ftp.af = source.settings.host, source.settings.port, sock, sock.family
    ftp.file = sock.makefile("r", encoding=ftp.encoding)
    try:
        line = net.wait_first_line(source, sock)
        if not line[:3].isdigit():
            raise net.wrong_protocol(source, line.decode("ascii", "replace").strip()[:60])
        ftp.welcome = ftp.getresp()
    except BaseException as exc:
        ftp.close()
        if isinstance(exc, ftplib.error_temp):
            raise ConnectionFailure(f"{net.where(source)} turned us away ({exc}).", net.TRY_LATER) from None
        if isinstance(exc, ftplib.error_perm):  # a 5xx greeting: an FTP server that will not serve us
            raise ConnectionFailure(f"{net.where(source)} refused the session at its greeting ({str(exc)[:60]}).",
                                    net.WHITELIST) from None
        if isinstance(exc, (ftplib.error_proto, ftplib.error_reply, UnicodeDecodeError)):
            raise net.wrong_protocol(source, str(exc)[:60]) from None
        if isinstance(exc, TimeoutError):
            raise net.silent(source, source.timeout) from None
        if isinstance(exc, (OSError, EOFError)):
            raise net.closed_before_greeting(source) from None
        raise
    return ftp


def secure(source: SourceConfig, ftp: ftplib.FTP_TLS) -> None:
    """AUTH TLS and a verified certificate (FTPS sources only)."""
    try:
        ftp.auth()
    except ftplib.error_perm as exc:
        raise ConnectionFailure(
            f"{net.where(source)} refused AUTH TLS ({str(exc)[:60]}): it does not offer FTPS here.",
            "Without TLS the password and the statements cross the network in clear, readable and forgeable on the "
            "way. Check host and port first (IBKR's FTP server offers FTPS on port 21); set tls = false only if "
            "this server offers no TLS at all, and keep allow_plain = false so only PGP-encrypted files are accepted.",
        ) from None
    except Exception as exc:  # noqa: BLE001 - the backend's error table classifies it
        raise ftp_failure(exc, source, "the TLS handshake") from None


def connect(source: SourceConfig) -> ftplib.FTP:
    """A logged-in connection in binary mode, inside remote_dir; errors carry a remedy."""
    ftp = welcome(source, net.open_tcp(source))
    try:
        if source.settings.tls:
            secure(source, ftp)
        login(ftp, source, source.settings.password.get() if source.settings.password else "")
        change_dir(ftp, source)
    except BaseException:
        ftp.close()
        raise
    return ftp


def login(ftp: ftplib.FTP, source: SourceConfig, password: str) -> None:
    """USER/PASS, then PROT P (FTPS), passive mode and binary type."""
    try:
        ftp.login(source.settings.username, password)
    except ftplib.error_perm as exc:
        if not source.settings.tls and TLS_REQUIRED.search(str(exc)):
            raise ConfigError(
                f"The FTP server {net.where(source)} requires TLS before the login ({str(exc)[:80]}), and source "
                f"{source.name} has tls = false.",
                f"Set tls = true for source {source.name} (explicit FTPS: AUTH TLS, then PROT P on the data "
                "channel); nothing else needs to change.",
            ) from None
        raise AuthenticationError(
            f"The FTP server refused the username or password for user {source.settings.username} ({str(exc)[:3]}).",
            "Check the username and the password (IBREPORTS_FTP_PASSWORD); IBKR can reset it.",
        ) from None
    except Exception as exc:  # noqa: BLE001 - the backend's error table classifies it
        raise ftp_failure(exc, source, "login") from None
    try:
        if source.settings.tls:
            ftp.prot_p()  # the statements travel on the data channel: protect it too
        ftp.set_pasv(source.settings.passive)
        ftp.voidcmd("TYPE I")
    except Exception as exc:  # noqa: BLE001 - the backend's error table classifies it
        raise ftp_failure(exc, source, "login") from None


def change_dir(ftp: ftplib.FTP, source: SourceConfig) -> None:
    """Enter remote_dir; ConfigError with the usual remedy when it is not there."""
    try:
        ftp.cwd(source.settings.remote_dir)
    except ftplib.error_perm as exc:
        raise ConfigError(
            f"Remote folder {source.settings.remote_dir!r} is not accessible on {source.settings.host} ({exc}).",
            net.REMOTE_DIR,
        ) from None
    except Exception as exc:  # noqa: BLE001 - the backend's error table classifies it
        raise ftp_failure(exc, source, "changing to remote_dir") from None


def supports_mlsd(ftp: ftplib.FTP) -> bool:
    """True when FEAT advertises MLST (which covers MLSD)."""
    try:
        features = ftp.sendcmd("FEAT")
    except ftplib.error_perm:
        return False
    return any(line.strip().upper().startswith("MLST") for line in features.splitlines()[1:])
