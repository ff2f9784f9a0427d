"""SSH session set-up for the sFTP source: private key, socket, host key check, login.

Each step is a function so ``doctor`` and ``trust-host`` can run them one at a time.
The host key is checked against known_hosts BEFORE any authentication is attempted.
"""

from __future__ import annotations

import shlex
import socket
import time
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ..config import SourceConfig
from ..errors import AuthenticationError, ConfigError, ConnectionFailure, IbreportsError
from . import net
from .hostkeys import check_host_key, known_keys, preferred_algorithms
from .legacy import SHA2_RSA, make_transport, signing_key, wants_sha1
from .sshoffer import mismatch


def load_private_key(source: SourceConfig) -> paramiko.PKey:
    """The source's private key, decrypted; ConfigError names the file and what to do."""
    path = Path(source.settings.key_file) if source.settings.key_file else None
    if path is None:
        raise ConfigError(f"Source {source.name} has no key_file.", "Set key_file (ibreports keygen writes keys/ibkr_sftp_rsa).")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"sFTP private key {path} does not exist.", "Run: ibreports keygen, or fix key_file.") from None
    except OSError as exc:
        raise ConfigError(f"sFTP private key {path} cannot be read ({exc.strerror}).", "Fix its permissions.") from None
    if data.startswith(b"PuTTY-User-Key-File"):
        # Into a new file: writing over the .ppk (often named ibkr_sftp_rsa too) would lose it if puttygen fails.
        converted = path.with_name(f"{path.stem if path.suffix.lower() == '.ppk' else path.name}_openssh")
        raise ConfigError(
            f"sFTP private key {path} is in PuTTY (.ppk) format.",
            f"Convert it into a new file in OpenSSH format (the .ppk stays as it is): puttygen {shlex.quote(str(path))} "
            f"-O private-openssh -o {shlex.quote(str(converted))} ; then set key_file = \"{converted}\" for source "
            f"{source.name}.",
        )
    secret = source.settings.key_passphrase.get().encode() if source.settings.key_passphrase else None
    loader = serialization.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data else serialization.load_pem_private_key
    try:
        try:
            key = loader(data, password=secret)
        except TypeError:
            if secret is None:
                raise
            key = loader(data, password=None)  # a passphrase was given but the key is not encrypted
    except TypeError:
        raise ConfigError(
            f"sFTP private key {path} is passphrase-protected but no passphrase is configured.",
            "Set IBREPORTS_KEY_PASSPHRASE (key_passphrase = \"env:IBREPORTS_KEY_PASSPHRASE\").",
        ) from None
    except ValueError:
        raise ConfigError(
            f"sFTP private key {path} cannot be decrypted: wrong passphrase or not a private key.",
            "Check IBREPORTS_KEY_PASSPHRASE (or key_passphrase) and key_file.",
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        return paramiko.RSAKey(key=key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return paramiko.ECDSAKey(vals=(key, key.public_key()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return paramiko.Ed25519Key.from_private_key_file(str(path), password=secret.decode() if secret else None)
    raise ConfigError(f"sFTP private key {path} has an unsupported type.", "Use an RSA key (ibreports keygen).")


def open_socket(source: SourceConfig):
    """A connected socket (or ProxyCommand) to the source; ConnectionFailure with a remedy."""
    if source.settings.proxy_command:
        try:
            return paramiko.ProxyCommand(source.settings.proxy_command)
        except (OSError, paramiko.SSHException) as exc:
            raise ConnectionFailure(f"proxy_command for {source.name} failed to start ({exc}).", "Fix proxy_command.") from None
    return net.open_tcp(source)


def wait_banner(source: SourceConfig, sock) -> str:
    """Wait (without consuming it) until the server sent its SSH banner; the banner line.

    paramiko reads the banner next. Waiting here first means a server that accepts TCP and
    never speaks fails with one sentence, every time (ProxyCommand: paramiko waits alone).
    """
    if not isinstance(sock, socket.socket):
        return ""
    line = net.wait_first_line(source, sock)
    if not line.startswith(b"SSH-") and line[:3].isdigit():
        raise net.wrong_protocol(source, line.decode("ascii", "replace").strip()[:60])
    return line.decode("ascii", "replace").strip()[:80]


def ssh_failure(exc: BaseException, source: SourceConfig, during: str,
                transport: paramiko.Transport | None = None) -> IbreportsError:
    """The error table of the sFTP backend: paramiko and socket errors -> our errors and remedies."""
    at = net.where(source)
    if isinstance(exc, IbreportsError):
        return exc
    if isinstance(exc, paramiko.IncompatiblePeer):  # both sides' lists: the server's offer is on the transport
        return mismatch(exc, source, at, transport)
    if isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower():
        if getattr(source.settings, "proxy_command", None):  # paramiko waited for the banner, not us
            return ConnectionFailure(
                f"No SSH banner from {at} came through proxy_command within {source.timeout:g} s.",
                "Run the proxy_command by hand to see whether it connects; then check host and port "
                f"({net.server_hint(source)}).",
            )
        return net.silent(source, source.timeout)
    if isinstance(exc, TimeoutError):
        return net.idle(source, during)
    if isinstance(exc, (EOFError, ConnectionError)):
        return net.broke(source, during, exc)
    return ConnectionFailure(
        f"SSH {during} with {at} failed ({type(exc).__name__}: {exc}).",
        f"Check that host and port point to the sFTP server ({net.server_hint(source)}) and that nothing on "
        "the path cuts the connection.",
    )


def negotiate(source: SourceConfig, sock, known: dict[str, paramiko.PKey],
              disabled: dict[str, list[str]] | None = None) -> paramiko.Transport:
    """SSH handshake on ``sock`` with explicit time-outs, preferring the host key types we know.

    Returns only once the key exchange is done (the host key is known); anything else is
    a ConnectionFailure, never a bare paramiko exception.
    """
    transport = make_transport(sock, disabled if disabled is not None else source.settings.disabled_algorithms)
    transport.banner_timeout = transport.handshake_timeout = source.timeout
    transport.auth_timeout = transport.channel_timeout = source.timeout
    opts = transport.get_security_options()
    opts.key_types = preferred_algorithms(known, opts.key_types)
    stalled = ConnectionFailure(
        f"{net.where(source)} did not complete the SSH handshake within {source.timeout:g} s.",
        "Check that host and port point to the sFTP server and that nothing on the path holds the connection.",
    )
    started = time.monotonic()
    try:
        # start_client returns without error when its own time-out expires first, the key
        # exchange unfinished: give paramiko's banner and handshake time-outs room to fire.
        transport.start_client(timeout=2 * source.timeout + 1)
        if not transport.is_active() or transport.host_key is None:
            raise stalled
    except BaseException as exc:
        transport.close()
        if isinstance(exc, EOFError) and time.monotonic() - started >= source.timeout:
            raise stalled from None  # paramiko's handshake time-out shows as a bare EOFError
        if isinstance(exc, Exception):
            raise ssh_failure(exc, source, "negotiation", transport) from None
        raise
    return transport


def handshake(source: SourceConfig, known: dict[str, paramiko.PKey],
              disabled: dict[str, list[str]] | None = None) -> paramiko.Transport:
    """Connect, wait for the banner and negotiate: the host key is known, nothing is verified yet."""
    sock = open_socket(source)
    try:
        wait_banner(source, sock)
    except BaseException:
        sock.close()
        raise
    return negotiate(source, sock, known, disabled)


def start_transport(source: SourceConfig) -> paramiko.Transport:
    """Connect, negotiate and verify the host key against known_hosts; not yet authenticated."""
    known = known_keys(source)
    transport = handshake(source, known)
    verify_host_key(source, transport, known)
    return transport


def verify_host_key(source: SourceConfig, transport: paramiko.Transport, known: dict[str, paramiko.PKey]) -> None:
    """check_host_key on the negotiated transport; closes it (before any authentication) on refusal."""
    try:
        check_host_key(source, transport.get_remote_server_key(), known)
    except BaseException:
        transport.close()
        raise


SHA1_REMEDY = (
    "Add to this source in the config: disabled_algorithms = { pubkeys = [\"rsa-sha2-256\", \"rsa-sha2-512\"] } "
    "(ssh-rsa signatures are weaker: also ask IBKR to accept rsa-sha2-256)."
)


class Sha1Only(AuthenticationError):
    """The server refused SHA-2 signatures but accepted ssh-rsa (SHA-1): ``transport`` is logged in that way.

    The caller owns ``transport``: ``doctor`` lists with it, ``fetch`` closes it and fails.
    """

    def __init__(self, source: SourceConfig, transport: paramiko.Transport) -> None:
        super().__init__(
            "The server refused our key with SHA-2 signatures (rsa-sha2-256/512) but accepted it with the old "
            f"ssh-rsa (SHA-1) signature for user {source.settings.username}.",
            SHA1_REMEDY,
        )
        self.transport = transport


def authenticate(source: SourceConfig, transport: paramiko.Transport, key: paramiko.PKey) -> None:
    """Public-key login; AuthenticationError carries the remedy for the cause.

    A refused RSA key is tried once more on a second connection with ssh-rsa (SHA-1)
    signatures, to tell "wrong key" from "server too old" (Sha1Only, holding that login).
    """
    try:
        _login(source, transport, key, source.settings.disabled_algorithms)
    except AuthenticationError as exc:
        if not getattr(exc, "key_refused", False) or not isinstance(key, paramiko.RSAKey) \
                or wants_sha1(source.settings.disabled_algorithms):
            raise
        legacy = _legacy_login(source, key)
        if legacy is None:
            raise
        raise Sha1Only(source, legacy) from None


def _login(source: SourceConfig, transport: paramiko.Transport, key: paramiko.PKey,
           disabled: dict[str, list[str]] | None) -> None:
    user = source.settings.username
    try:
        remaining = transport.auth_publickey(user, signing_key(key, disabled))
    except paramiko.BadAuthenticationType as exc:
        raise AuthenticationError(
            f"Server does not accept public-key login for user {user} (it allows: {', '.join(exc.allowed_types)}).",
            "Check the username and that IBKR enabled key authentication for it.",
        ) from None
    except paramiko.AuthenticationException:
        refused = AuthenticationError(
            f"Server refused our key for user {user}.",
            f"The private key {source.settings.key_file} does not match the public key IBKR holds for this username: send "
            f"{Path(str(source.settings.key_file)).name}.pub to IBKR's Reporting Integration team, or check the username.",
        )
        refused.key_refused = True  # the one refusal an ssh-rsa-only server also gives
        raise refused from None
    except Exception as exc:  # noqa: BLE001 - the backend's error table classifies it
        raise ssh_failure(exc, source, "login") from None
    if remaining or not transport.is_authenticated():
        raise AuthenticationError(
            f"Server wants more than a key for user {user} ({', '.join(remaining)}).",
            "ibreports supports key-only login; ask IBKR to set the account up for key authentication.",
        )


def _legacy_login(source: SourceConfig, key: paramiko.RSAKey) -> paramiko.Transport | None:
    """A second login offering only ssh-rsa signatures; the transport when the server accepts it."""
    disabled = dict(source.settings.disabled_algorithms or {})
    disabled["pubkeys"] = sorted({*disabled.get("pubkeys", []), *SHA2_RSA})
    try:
        known = known_keys(source)
        transport = handshake(source, known, disabled)
    except IbreportsError:
        return None
    try:
        check_host_key(source, transport.get_remote_server_key(), known)
        _login(source, transport, key, disabled)
        return transport
    except IbreportsError:
        transport.close()
        return None
