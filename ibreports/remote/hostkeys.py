"""Pinned SSH host keys: read known_hosts, compare, fingerprint, record.

Trust is decided here and only here; nothing is ever added to known_hosts
implicitly (recording is ``ibreports trust-host``'s, in ibreports/trust.py).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import paramiko

from ..config import SourceConfig
from ..errors import ConfigError, HostKeyError

# paramiko names an RSA host key "ssh-rsa", but negotiates it as one of these.
_RSA_ALGOS = ["rsa-sha2-512", "rsa-sha2-256"]


def host_id(host: str, port: int) -> str:
    """The known_hosts name of a server: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style fingerprint, ``SHA256:<base64 without padding>``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def key_line(key: paramiko.PKey) -> str:
    """``<type> <base64>`` as written in known_hosts and authorized_keys."""
    return f"{key.get_name()} {key.get_base64()}"


def known_keys(source: SourceConfig) -> dict[str, paramiko.PKey]:
    """Recorded keys for this source's host and port, by key type (empty when none)."""
    path = source.settings.known_hosts
    if path is None or not Path(path).exists():
        return {}
    try:
        keys = paramiko.HostKeys(str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"known_hosts file {path} cannot be read ({exc}).",
            "Fix its permissions or contents, or run: ibreports trust-host --source " + source.name,
        ) from None
    found = keys.lookup(host_id(source.settings.host, source.settings.port))
    return dict(found) if found else {}


def preferred_algorithms(known: dict[str, paramiko.PKey], available: tuple[str, ...]) -> list[str]:
    """Host key algorithms with the recorded types first, so the server shows us a key we can compare."""
    first: list[str] = []
    for name in known:
        first += _RSA_ALGOS if name == "ssh-rsa" else [name]
    first = [a for a in first if a in available]
    return first + [a for a in available if a not in first]


def check_host_key(source: SourceConfig, key: paramiko.PKey, known: dict[str, paramiko.PKey] | None = None) -> None:
    """Raise HostKeyError unless ``key`` is the one recorded for this source."""
    known = known_keys(source) if known is None else known
    where = host_id(source.settings.host, source.settings.port)
    if not known:
        raise HostKeyError(
            f"Host key for {where} is not in {source.settings.known_hosts} (the server shows {key.get_name()} "
            f"{fingerprint(key)}).",
            f"Verify this fingerprint with IBKR, then run: ibreports trust-host --source {source.name} "
            f"--fingerprint {fingerprint(key)}",
        )
    recorded = known.get(key.get_name())
    if recorded is not None and recorded.asbytes() == key.asbytes():
        return
    was = ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in known.values())
    raise HostKeyError(
        f"Host key for {where} has CHANGED: the server shows {key.get_name()} {fingerprint(key)} "
        f"but {source.settings.known_hosts} records {was}; this may mean someone is intercepting the connection.",
        "Do not connect: ask IBKR whether the host key changed and its new fingerprint; only then remove the "
        f"old line and run: ibreports trust-host --source {source.name} --fingerprint SHA256:...",
    )
