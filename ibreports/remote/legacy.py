"""Opt-in ssh-rsa (SHA-1) signatures for servers that refuse rsa-sha2-256/512 during login.

paramiko 5 no longer signs with SHA-1. Some older SFTP servers still accept only
that, which is why OpenSSH users know the ``disabled_algorithms`` work-around. Here
it is re-enabled only for user authentication, and only when a source disables
both SHA-2 RSA signature algorithms; host keys are still verified with SHA-2.
"""

from __future__ import annotations

import paramiko
from cryptography.hazmat.primitives import hashes

from .sshoffer import OfferTransport

SHA2_RSA = ["rsa-sha2-256", "rsa-sha2-512"]
# Bigger channel packets and window than paramiko's defaults (32 KiB, 2 MiB): per-packet work
# in Python bounds bulk downloads, and a long fat link needs a window to match.
MAX_PACKET = 1 << 17
WINDOW = 1 << 25
LEGACY_SETTING = {"pubkeys": SHA2_RSA}


class Sha1RSAKey(paramiko.RSAKey):
    """An RSA key that can also sign with ``ssh-rsa`` (PKCS#1 v1.5 over SHA-1)."""

    HASHES = {**paramiko.RSAKey.HASHES, "ssh-rsa": hashes.SHA1}


class Sha1Transport(OfferTransport):
    """A transport that offers ``ssh-rsa`` last for public-key login (never for host keys)."""

    _preferred_pubkeys = (*paramiko.Transport._preferred_pubkeys, "ssh-rsa")


def wants_sha1(disabled: dict[str, list[str]] | None) -> bool:
    """True when both SHA-2 RSA signature algorithms are disabled (the user's explicit opt-in)."""
    pubkeys = (disabled or {}).get("pubkeys", [])
    return all(name in pubkeys for name in SHA2_RSA)


def make_transport(sock, disabled: dict[str, list[str]] | None) -> paramiko.Transport:
    """A client transport honouring ``disabled``, able to sign with SHA-1 when that is what is left."""
    cls = Sha1Transport if wants_sha1(disabled) else OfferTransport
    return cls(sock, disabled_algorithms=disabled, default_window_size=WINDOW, default_max_packet_size=MAX_PACKET)


def signing_key(key: paramiko.PKey, disabled: dict[str, list[str]] | None) -> paramiko.PKey:
    """``key`` itself, or the same RSA key able to sign with SHA-1 when the source opted in."""
    if wants_sha1(disabled) and isinstance(key, paramiko.RSAKey) and not isinstance(key, Sha1RSAKey):
        return Sha1RSAKey(key=key.key)
    return key
