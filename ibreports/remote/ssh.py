"""SSH session set-up for the sFTP source: private key, socket, host key check, login.

Each step is a function so ``doctor`` and ``trust-host`` can run them one at a time.
The host key is checked against known_hosts BEFORE any authentication is attempted.
"""

from __future__ import annotations

import socket
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ..config import SourceConfig
from ..errors import AuthenticationError, ConfigError, ConnectionFailure, IbreportsError
from .hostkeys import check_host_key, known_keys, preferred_algorithms
from .legacy import make_transport, signing_key


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
        raise ConfigError(
            f"sFTP private key {path} is in PuTTY (.ppk) format.",
            f"Convert it to OpenSSH format: puttygen {path.name} -O private-openssh -o ibkr_sftp_rsa",
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
    where = f"{source.settings.host}:{source.settings.port}"
    if source.settings.proxy_command:
        try:
            return paramiko.ProxyCommand(source.settings.proxy_command)
        except (OSError, paramiko.SSHException) as exc:
            raise ConnectionFailure(f"proxy_command for {source.name} failed to start ({exc}).", "Fix proxy_command.") from None
    try:
        sock = socket.create_connection((source.settings.host, source.settings.port), timeout=source.timeout)
        # Like OpenSSH: without it, Nagle holds small SFTP read requests and downloads run ~3x slower.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except socket.gaierror:
        raise ConnectionFailure(f"Cannot resolve host {source.settings.host}.", "Check host in the config and this machine's DNS.") from None
    except ConnectionRefusedError:
        raise ConnectionFailure(
            f"{where} refused the connection.",
            "Check host and port (IBKR's sFTP server listens on port 32), and that no firewall rejects it.",
        ) from None
    except TimeoutError:
        raise ConnectionFailure(
            f"No answer from {where} within {source.timeout:g} s.",
            f"A firewall may block outgoing TCP port {source.settings.port}, or IBKR has not whitelisted your public IP: "
            "ask IBKR's Reporting Integration team to whitelist it; also check host and port.",
        ) from None
    except OSError as exc:
        raise ConnectionFailure(f"Cannot connect to {where} ({exc.strerror or exc}).", "Check the network, host and port.") from None


def negotiate(source: SourceConfig, sock, known: dict[str, paramiko.PKey],
              disabled: dict[str, list[str]] | None = None) -> paramiko.Transport:
    """SSH handshake on ``sock`` with explicit time-outs, preferring the host key types we know."""
    transport = make_transport(sock, disabled if disabled is not None else source.settings.disabled_algorithms)
    transport.banner_timeout = transport.handshake_timeout = source.timeout
    transport.auth_timeout = transport.channel_timeout = source.timeout
    opts = transport.get_security_options()
    opts.key_types = preferred_algorithms(known, opts.key_types)
    try:
        transport.start_client(timeout=source.timeout)
    except paramiko.IncompatiblePeer as exc:
        transport.close()
        raise ConnectionFailure(
            f"{source.settings.host}:{source.settings.port} shares no SSH algorithm with us ({exc}).",
            "Adjust disabled_algorithms for this source.",
        ) from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        transport.close()
        raise ConnectionFailure(
            f"SSH negotiation with {source.settings.host}:{source.settings.port} failed ({type(exc).__name__}: {exc}).",
            "Check that host and port point to IBKR's sFTP server and that nothing on the path cuts the connection.",
        ) from None
    return transport


def start_transport(source: SourceConfig) -> paramiko.Transport:
    """Connect, negotiate and verify the host key against known_hosts; not yet authenticated."""
    known = known_keys(source)
    transport = negotiate(source, open_socket(source), known)
    try:
        check_host_key(source, transport.get_remote_server_key(), known)
    except IbreportsError:
        transport.close()  # before any authentication is attempted
        raise
    return transport


def scan_host_key(source: SourceConfig) -> paramiko.PKey:
    """The server's host key, without authenticating (for ``trust-host``)."""
    transport = make_transport(open_socket(source), source.settings.disabled_algorithms)
    transport.banner_timeout = transport.handshake_timeout = source.timeout
    try:
        transport.start_client(timeout=source.timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise ConnectionFailure(f"SSH negotiation with {source.settings.host}:{source.settings.port} failed ({exc}).", "Check host and port.") from None
    finally:
        transport.close()


def authenticate(source: SourceConfig, transport: paramiko.Transport, key: paramiko.PKey) -> None:
    """Public-key login; AuthenticationError carries IBKR's usual remedy."""
    user = source.settings.username
    try:
        remaining = transport.auth_publickey(user, signing_key(key, source.settings.disabled_algorithms))
    except paramiko.BadAuthenticationType as exc:
        raise AuthenticationError(
            f"Server does not accept public-key login for user {user} (it allows: {', '.join(exc.allowed_types)}).",
            "Check the username and that IBKR enabled key authentication for it.",
        ) from None
    except paramiko.AuthenticationException:
        raise AuthenticationError(
            f"Server refused our key for user {user}.",
            f"The private key {source.settings.key_file} does not match the public key IBKR holds for this username: send "
            f"{Path(str(source.settings.key_file)).name}.pub to IBKR's Reporting Integration team, or check the username.",
        ) from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise ConnectionFailure(f"Connection lost during login to {source.settings.host}:{source.settings.port} ({exc}).", "Try again.") from None
    if remaining or not transport.is_authenticated():
        raise AuthenticationError(
            f"Server wants more than a key for user {user} ({', '.join(remaining)}).",
            "ibreports supports key-only login; ask IBKR to set the account up for key authentication.",
        )
