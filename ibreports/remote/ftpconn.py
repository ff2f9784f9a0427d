"""FTP / FTPS session set-up: connect, TLS with a verified certificate, login, passive data channels.

Each step raises one of our errors with a remedy, so ``doctor`` can run them one at a time.
"""

from __future__ import annotations

import ftplib
import socket
import ssl

from ..config import SourceConfig
from ..errors import AuthenticationError, ConfigError, ConnectionFailure, HostKeyError, IbreportsError

NETWORK_ERRORS = (OSError, EOFError, ftplib.error_temp, ftplib.error_reply, ftplib.error_proto)


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


def connect(source: SourceConfig) -> ftplib.FTP:
    """A logged-in connection in binary mode, inside remote_dir; errors carry a remedy."""
    where = f"{source.settings.host}:{source.settings.port}"
    password = source.settings.password.get() if source.settings.password else ""
    if source.settings.tls:
        context = ssl.create_default_context(cafile=str(source.settings.ca_file) if source.settings.ca_file else None)
        ftp: ftplib.FTP = PassiveFTPS(context=context, timeout=source.timeout)
    else:
        ftp = PassiveFTP(timeout=source.timeout)
    try:
        ftp.connect(source.settings.host, source.settings.port, timeout=source.timeout)
    except socket.gaierror:
        raise ConnectionFailure(f"Cannot resolve host {source.settings.host}.", "Check host in the config and this machine's DNS.") from None
    except ConnectionRefusedError:
        raise ConnectionFailure(f"{where} refused the connection.", "Check host and port (IBKR's FTP server listens on port 21).") from None
    except TimeoutError:
        raise ConnectionFailure(
            f"No answer from {where} within {source.timeout:g} s.",
            f"A firewall may block outgoing TCP port {source.settings.port}, or IBKR has not whitelisted your public IP.",
        ) from None
    except (OSError, EOFError, ftplib.Error) as exc:
        raise ConnectionFailure(f"Cannot connect to {where} ({exc}).", "Check the network, host and port.") from None
    try:
        _login(ftp, source, password)
    except IbreportsError:
        ftp.close()
        raise
    except ssl.SSLCertVerificationError as exc:
        ftp.close()
        raise certificate_error(where, exc) from None
    except (*NETWORK_ERRORS, ftplib.error_perm) as exc:
        ftp.close()
        raise ConnectionFailure(
            f"The connection to {where} failed during login ({type(exc).__name__}: {exc}).", "Try again."
        ) from None
    return ftp


def certificate_error(where: str, exc: ssl.SSLCertVerificationError) -> HostKeyError:
    """Like a host key: an unverifiable certificate is refused, never retried."""
    return HostKeyError(
        f"The certificate of the FTPS server {where} could not be verified ({exc.verify_message}).",
        "If this really is the right server, set ca_file to the certificate of the CA that signed it; "
        "otherwise do not connect.",
    )


def _login(ftp: ftplib.FTP, source: SourceConfig, password: str) -> None:
    if source.settings.tls:
        try:
            ftp.auth()
        except ftplib.error_perm as exc:
            raise ConnectionFailure(
                f"{source.settings.host}:{source.settings.port} does not offer FTPS (AUTH TLS refused: {exc}).",
                "Set tls = false for this source, or check host and port.",
            ) from None
    login(ftp, source, password)
    change_dir(ftp, source)


def login(ftp: ftplib.FTP, source: SourceConfig, password: str) -> None:
    """USER/PASS, then PROT P (FTPS), passive mode and binary type."""
    try:
        ftp.login(source.settings.username, password)
    except ftplib.error_perm as exc:
        raise AuthenticationError(
            f"The FTP server refused the username or password for user {source.settings.username} ({str(exc)[:3]}).",
            "Check the username and the password (IBREPORTS_FTP_PASSWORD); IBKR can reset it.",
        ) from None
    if source.settings.tls:
        ftp.prot_p()  # the statements travel on the data channel: protect it too
    ftp.set_pasv(source.settings.passive)
    ftp.voidcmd("TYPE I")


def change_dir(ftp: ftplib.FTP, source: SourceConfig) -> None:
    """Enter remote_dir; ConfigError with the usual remedy when it is not there."""
    try:
        ftp.cwd(source.settings.remote_dir)
    except ftplib.error_perm as exc:
        raise ConfigError(
            f"Remote folder {source.settings.remote_dir!r} is not accessible on {source.settings.host} ({exc}).",
            "Set remote_dir to the folder IBKR delivers to (usually 'outgoing').",
        ) from None


def supports_mlsd(ftp: ftplib.FTP) -> bool:
    """True when FEAT advertises MLST (which covers MLSD)."""
    try:
        features = ftp.sendcmd("FEAT")
    except ftplib.error_perm:
        return False
    return any(line.strip().upper().startswith("MLST") for line in features.splitlines()[1:])
