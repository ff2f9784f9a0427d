"""Key generation: the sFTP key pair and the PGP key pair IBKR needs.

Library API (no Prefect): ``generate_keys`` here, ``backup_keys`` /
``restore_keys`` / ``verify_backup`` in :mod:`ibreports.bundle` (re-exported).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .bundle import BackupManifest, BackupReport, RestoreReport, backup_keys, restore_keys, verify_backup
from .errors import KeyMaterialError
from .keyfiles import (
    KEY_FILES, PGP_PUBLIC, PGP_SECRET, SSH_PRIVATE, SSH_PUBLIC,
    check_passphrase, commit, discard, gnupg_home, make_private_dir, open_gpg, pgp_fingerprints,
    RETIRED, refuse_links, retire, ssh_fingerprint, stage_file, tighten_dir,
)
from .pgp.keyring import holds_secret_encryption_key

__all__ = [
    "KEY_FILES", "BackupManifest", "BackupReport", "KeyReport", "RestoreReport", "backup_keys", "check_request",
    "existing_keys", "generate_keys", "restore_keys", "ssh_fingerprint", "verify_backup",
]

log = logging.getLogger(__name__)

MIN_RSA_BITS = 2048
EXPORT_ATTEMPTS = 3  # exports of the new PGP secret key before keygen gives up
MAX_RSA_BITS = 16384
MAX_PGP_BITS = 4096  # gpg refuses larger RSA keys without --enable-large-rsa
_EXPIRE = re.compile(r"^(0|[1-9][0-9]{0,3}[dwmy]?)$")
_EMAIL = re.compile(r"^[^@\s<>()\"]+@[^@\s<>()\"]+\.[^@\s<>()\"]+$")


@dataclass
class KeyReport:
    """What keygen did; holds no secret material."""

    dir: Path
    ssh_fingerprint: str
    ssh_public_key: str
    rsa_bits: int
    pgp_fingerprint: str
    pgp_bits: int
    pgp_uid: str
    pgp_expire: str
    written: list[Path] = field(default_factory=list)
    retired: Path | None = None
    folder_note: str = ""  # the key folder's mode was tightened, or could not be


def existing_keys(folder: Path) -> list[str]:
    """Names of the key files already present in ``folder``."""
    return [n for n in KEY_FILES if (folder / n).exists() or (folder / n).is_symlink()]


def generate_keys(
    dir: Path,
    passphrase: str,
    name: str = "ibreports",
    email: str | None = None,
    rsa_bits: int = 4096,
    pgp_bits: int = 4096,
    pgp_expire: str = "0",
    force: bool = False,
) -> KeyReport:
    """Generate both key pairs into ``dir``, protected by ``passphrase``.

    Everything is validated and generated before anything is written; the four
    files are then staged under temporary names and renamed into place, so a
    crash never leaves half a key. With ``force`` old keys move to
    ``dir/retired/<UTC timestamp>/``; they are never deleted.
    """
    folder = Path(dir)
    check_passphrase(passphrase, "key passphrase")
    name, email = check_request(folder, name, email, rsa_bits, pgp_bits, pgp_expire, force)

    log.info("Generating a %d-bit RSA key for sFTP", rsa_bits)
    ssh_private, ssh_public = _ssh_keypair(passphrase, rsa_bits, email or name)
    log.info("Generating a %d-bit RSA PGP key with an encryption subkey", pgp_bits)
    pgp_secret, pgp_public, pgp_fpr = _pgp_keypair(passphrase, name, email, pgp_bits, pgp_expire)

    make_private_dir(folder)
    folder_note = tighten_dir(folder)
    _refuse_existing(folder, force)  # again: the generation took a while
    contents = {
        SSH_PRIVATE: (ssh_private, 0o600),
        SSH_PUBLIC: (ssh_public.encode() + b"\n", 0o644),
        PGP_SECRET: (pgp_secret, 0o600),
        PGP_PUBLIC: (pgp_public, 0o644),
    }
    staged: list[Path] = []
    try:
        for fname, (data, mode) in contents.items():
            staged.append(stage_file(folder / fname, data, mode))
        old = existing_keys(folder)
        retired = retire(folder, old) if old else None
        for tmp, fname in zip(staged, contents):
            commit(tmp, folder / fname)
    except BaseException as exc:
        discard(staged)  # a crash or refusal here leaves no temporary key file behind
        if isinstance(exc, OSError):
            raise KeyMaterialError(
                f"The keys could not be written to {folder} ({exc.strerror}).",
                "Check the folder's permissions and free space, then run keygen again.",
            ) from None
        raise
    uid = f"{name} <{email}>" if email else name
    return KeyReport(
        dir=folder, ssh_fingerprint=ssh_fingerprint(ssh_public), ssh_public_key=ssh_public,
        rsa_bits=rsa_bits, pgp_fingerprint=pgp_fpr, pgp_bits=pgp_bits, pgp_uid=uid,
        pgp_expire=pgp_expire, written=[folder / n for n in contents], retired=retired, folder_note=folder_note,
    )


def check_request(
    folder: Path, name: str, email: str | None, rsa_bits: int, pgp_bits: int, pgp_expire: str, force: bool
) -> tuple[str, str | None]:
    """Validate a keygen request (cheap; callers run it before asking for a passphrase).

    Returns the cleaned-up name and e-mail.
    """
    name, email = _check_uid(name, email)
    _check_bits(rsa_bits, pgp_bits)
    if not _EXPIRE.match(pgp_expire):
        raise KeyMaterialError(
            f"PGP expiry '{pgp_expire}' is not understood.",
            "Use 0 (never), a number of days, or a number with d, w, m or y (e.g. 2y).",
        )
    _refuse_existing(folder, force)
    refuse_links(folder, [f"{RETIRED}/x"])  # --force moves old keys there: never through a link
    return name, email


def _check_uid(name: str, email: str | None) -> tuple[str, str | None]:
    # The uid goes into gpg's batch parameter file, one line per setting: a control
    # character could smuggle in another setting (e.g. a different passphrase).
    name = (name or "").strip()
    if not name or len(name) > 128 or any(ord(c) < 32 or c in "<>\x7f" for c in name):
        raise KeyMaterialError(
            "The key name must be 1 to 128 printable characters without '<' or '>'.",
            "Pass a plain --name such as 'Acme Capital reports'.",
        )
    if email is not None:
        email = email.strip() or None
    if email is not None and (len(email) > 254 or not _EMAIL.match(email) or not email.isprintable()):
        raise KeyMaterialError(
            "The e-mail address for the PGP key is not valid.", "Pass --email user@example.com or omit it."
        )
    return name, email


def _check_bits(rsa_bits: int, pgp_bits: int) -> None:
    if not MIN_RSA_BITS <= rsa_bits <= MAX_RSA_BITS:
        raise KeyMaterialError(
            f"An RSA key of {rsa_bits} bits is refused for sFTP (allowed: {MIN_RSA_BITS} to {MAX_RSA_BITS}).",
            "Use the default --rsa-bits 4096 (IBKR accepts 2048 or more).",
        )
    if not MIN_RSA_BITS <= pgp_bits <= MAX_PGP_BITS:
        raise KeyMaterialError(
            f"A PGP key of {pgp_bits} bits is refused (allowed: {MIN_RSA_BITS} to {MAX_PGP_BITS}).",
            "Use the default --pgp-bits 4096.",
        )


def _refuse_existing(folder: Path, force: bool) -> None:
    old = existing_keys(folder)
    if old and not force:
        raise KeyMaterialError(
            f"Keys already exist in {folder}: {', '.join(old)}.",
            f"Keep them, or pass --force to move them to {folder / 'retired'}/<timestamp>/ and generate "
            "new ones (IBKR must then receive the new public keys).",
        )


def _ssh_keypair(passphrase: str, bits: int, comment: str) -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    # OpenSSH format + BestAvailableEncryption = aes256-ctr with the bcrypt KDF, like ssh-keygen.
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.BestAvailableEncryption(passphrase.encode("utf-8")),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")
    safe_comment = "".join(c if c.isprintable() and not c.isspace() else "_" for c in comment)
    return private, f"{public} {safe_comment}"


def _pgp_keypair(
    passphrase: str, name: str, email: str | None, bits: int, expire: str
) -> tuple[bytes, bytes, str]:
    """RSA primary (certify + sign) and an RSA encryption subkey, exported armored."""
    params = [
        "Key-Type: RSA", f"Key-Length: {bits}", "Key-Usage: sign",
        "Subkey-Type: RSA", f"Subkey-Length: {bits}", "Subkey-Usage: encrypt",
        f"Name-Real: {name}", *([f"Name-Email: {email}"] if email else []),
        f"Expire-Date: {expire}", f"Passphrase: {passphrase}", "%commit", "",
    ]
    with gnupg_home() as home:
        gpg = open_gpg(home)
        result = gpg.gen_key("\n".join(params))
        fpr = str(result.fingerprint or "")
        if result.returncode != 0 or not fpr:
            raise KeyMaterialError(
                f"gpg could not generate the PGP key (status: {result.status or 'unknown'}).",
                "Check that gnupg 2.2+ is installed (gpg --version) and run keygen again.",
            )
        public = gpg.export_keys(fpr, armor=True)
        # gpg-agent now and then fails to unprotect the subkey during the export ("Corrupted
        # protection", seen on a loaded machine) and gpg still writes the primary key: check what was
        # exported in a fresh home and export again, so keygen never writes a key that cannot decrypt.
        for _ in range(EXPORT_ATTEMPTS):
            secret = gpg.export_keys(fpr, secret=True, armor=True, passphrase=passphrase)
            with gnupg_home() as check:
                if secret.strip() and holds_secret_encryption_key(check, secret.encode("ascii"), fpr):
                    break
            log.warning("the exported PGP secret key lacks its encryption subkey; exporting again")
        else:
            secret = ""
        if not secret.strip() or not public.strip():  # python-gnupg returns "" when an export fails
            raise KeyMaterialError(
                "gpg generated the PGP key but could not export it.",
                "Check that gnupg 2.2+ is installed (gpg --version) and run keygen again.",
            )
        # The exported files, not gpg's claim, decide the fingerprint we print.
        for data in (public, secret):
            if pgp_fingerprints(data.encode("ascii"), home) != [fpr]:
                raise KeyMaterialError("The exported PGP key does not match the generated one.", "Run keygen again.")
    return secret.encode("ascii"), public.encode("ascii"), fpr
