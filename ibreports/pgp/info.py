"""What a key file or a message holds, without importing anything anywhere that lasts."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .gpgrun import gpg, status
from .homes import claim_home, release_homes

ARMOR_HEADER = b"-----BEGIN PGP MESSAGE-----"
# PKESK, SKESK, compressed, marker, literal, SEIPD, AEAD: packets a message may start with.
MESSAGE_TAGS = {1, 3, 8, 10, 11, 18, 20}


def is_openpgp(path: Path) -> bool:
    """True if the file starts like an OpenPGP message (ASCII armor or a binary packet header)."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    stripped = head.lstrip()
    if stripped.startswith(ARMOR_HEADER):
        return True
    if not head or not head[0] & 0x80:
        return False
    first = head[0]
    tag = first & 0x3F if first & 0x40 else (first >> 2) & 0x0F  # new vs old packet format
    return tag in MESSAGE_TAGS


def signer_fingerprints(home: Path, files: list[Path]) -> set[str]:
    """Primary fingerprints of the signer key files; a missing file or one without a key is a ConfigError."""
    found: set[str] = set()
    for path in files:
        if not path.is_file():
            raise ConfigError(f"The signer key file {path} ([pgp] signer_keys) does not exist.",
                              "Fix the path, or remove it from [pgp] signer_keys.")
        fprs = armor_fingerprints(path, home)
        if not fprs:
            raise ConfigError(f"The signer key file {path} ([pgp] signer_keys) holds no PGP key.",
                              "Point it at the signer's armored public key (gpg --armor --export KEYID).")
        found.update(fprs)
    return found


def armor_fingerprints(path: Path, home: Path | None = None) -> list[str]:
    """Primary fingerprints of the keys in a key file (armored or binary, public or secret)."""
    if not Path(path).is_file():
        raise ConfigError(f"Key file {path} does not exist.", "Fix the path or run ibreports keygen.")
    lines = _scratch(["--with-colons", "--show-keys", str(path)], home).splitlines()
    return [
        lines[i + 1].split(":")[9]
        for i, line in enumerate(lines[:-1])
        if line.startswith(("pub:", "sec:")) and lines[i + 1].startswith("fpr:")
    ]


def recipients(path: Path) -> list[str]:
    """Long key IDs a message is encrypted to (0000000000000000 for a hidden recipient)."""
    out = _scratch(["--no-autostart", "--list-only", "--decrypt", str(path)])
    return [w[1] for w in status(out) if w[:1] == ["ENC_TO"] and len(w) > 1]


def _scratch(args: list[str], home: Path | None = None) -> str:
    """Run gpg (no agent) in ``home`` or a throwaway one; its status and colon output."""
    if home is not None:
        return gpg(home, *args).stdout.decode("utf-8", "replace")
    claimed = claim_home()
    try:
        return gpg(claimed[0], *args).stdout.decode("utf-8", "replace")
    finally:
        release_homes([claimed])


