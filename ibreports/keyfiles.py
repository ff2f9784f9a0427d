"""Key-file primitives shared by generation, backup and restore.

Atomic private writes, passphrase rules, fingerprints (SSH from the key bytes,
PGP through a throwaway GnuPG home) and retiring old keys. No secrets are ever
logged or put into an exception.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
import stat
import struct
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from .errors import KeyMaterialError
from .files import fsync_dir

SSH_PRIVATE = "ibkr_sftp_rsa"
SSH_PUBLIC = "ibkr_sftp_rsa.pub"
PGP_SECRET = "ibkr_pgp_secret.asc"
PGP_PUBLIC = "ibkr_pgp_public.asc"
KEY_FILES = (SSH_PRIVATE, SSH_PUBLIC, PGP_SECRET, PGP_PUBLIC)
PUBLIC_NAMES = (SSH_PUBLIC, PGP_PUBLIC, "known_hosts")
MIN_PASSPHRASE = 12
RETIRED = "retired"


def check_passphrase(passphrase: str, what: str = "passphrase", source: str = "") -> None:
    """Refuse weak or unsafe passphrases; the message never contains the passphrase.

    Newlines, carriage returns and NUL are refused because the passphrase travels
    to gpg through a pipe, one line per secret: anything after a newline would be
    read as a separate command or answer. Surrounding blanks are refused because
    gpg would silently strip them.
    """
    where = f" from {source}" if source else ""
    if any(c in passphrase for c in "\n\r\0"):
        raise KeyMaterialError(
            f"The {what}{where} contains a newline, carriage return or NUL character.",
            "Use a single-line passphrase.",
        )
    if passphrase != passphrase.strip():
        # gpg's batch parameter file drops surrounding blanks, so the PGP key would get another passphrase.
        raise KeyMaterialError(
            f"The {what}{where} begins or ends with a space or tab.", "Remove the surrounding blanks."
        )
    if len(passphrase) < MIN_PASSPHRASE:
        raise KeyMaterialError(
            f"The {what}{where} is too short (at least {MIN_PASSPHRASE} characters are required).",
            "Choose a longer passphrase, e.g. four or more random words.",
        )


def is_private(relpath: str) -> bool:
    """True unless the file is known to be public: unknown files are treated as secret."""
    return Path(relpath).name not in PUBLIC_NAMES


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_stamp() -> str:
    """UTC timestamp for folder names: YYYYmmddTHHMMSSZ."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# --- atomic writes -----------------------------------------------------------------


def stage_file(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to a fresh temporary name beside ``path``, created with ``mode``.

    The mode is given to os.open, so a private file is never readable by others,
    not even for the instant before a chmod. Returns the temporary path for commit().
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def commit(tmp: Path, path: Path) -> None:
    """Move a staged file into place (atomic on one file system) and persist the rename."""
    os.replace(tmp, path)
    _fsync_dir_quietly(path.parent)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a whole file atomically: a crash leaves the old file or the new one, never half."""
    commit(stage_file(path, data, mode), path)


def discard(staged: list[Path]) -> None:
    for tmp in staged:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _fsync_dir_quietly(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fsync_dir(folder)


def make_private_dir(folder: Path) -> None:
    """Create ``folder`` (and parents) with mode 0700 if it does not exist."""
    if not folder.is_dir():
        try:
            # Path.mkdir(parents=True) gives the parents the umask's mode: create each level here.
            for level in reversed([folder, *folder.parents]):
                if not level.is_dir():
                    with contextlib.suppress(FileExistsError):
                        level.mkdir(mode=0o700)
        except OSError as exc:
            raise KeyMaterialError(
                f"The key folder {folder} cannot be created ({exc.strerror}).",
                "Choose a writable --dir.",
            ) from None


def tighten_dir(folder: Path) -> str:
    """Make an existing key folder 0700 when it is ours (a checkout's ``keys/`` is 0755).

    Returns a line for the user when the mode was changed or cannot be ("" when already private).
    """
    info = folder.stat()
    mode = info.st_mode & 0o777
    if not mode & 0o077:
        return ""
    if info.st_uid == os.getuid():
        with contextlib.suppress(OSError):
            os.chmod(folder, 0o700)
            return f"Key folder {folder} was mode {mode:04o}; it is now 0700 (private to you)."
    return f"Warning: key folder {folder} is mode {mode:04o} and could not be made private; run: chmod 700 {folder}"


def refuse_links(folder: Path, relpaths: list[str]) -> None:
    """Every folder between ``folder`` and each ``folder/rel`` is a real folder (or missing).

    A sub-folder swapped for a symbolic link (``retired`` -> elsewhere) would carry keys out of
    ``folder``: nothing is ever written through a link. ``folder`` itself may be one (the user's choice).
    """
    for rel in relpaths:
        level = folder
        for part in PurePosixPath(rel).parts[:-1]:
            level = level / part
            try:
                info = os.lstat(level)
            except FileNotFoundError:
                break
            if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
                what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a folder"
                raise KeyMaterialError(
                    f"{level} is {what}; keys are never written through it, so nothing was written.",
                    f"Move it out of {folder} (keep what it points to safe) and run again.",
                )


def retire(folder: Path, relpaths: list[str]) -> Path:
    """Move files into ``folder/retired/<UTC timestamp>/`` (never delete); returns that folder."""
    refuse_links(folder, [f"{RETIRED}/x", *relpaths])
    base = folder / RETIRED
    make_private_dir(base)
    stamp = utc_stamp()
    target, n = base / stamp, 1
    while True:
        try:
            target.mkdir(mode=0o700)
            break
        except FileExistsError:
            target, n = base / f"{stamp}-{n}", n + 1
    for rel in relpaths:
        dest = target / rel
        make_private_dir(dest.parent)
        os.rename(folder / rel, dest)
    _fsync_dir_quietly(target)
    return target


# --- fingerprints --------------------------------------------------------------------


def ssh_fingerprint(pub_line: str) -> str:
    """``SHA256:...`` of an OpenSSH public key line, exactly as ``ssh-keygen -l`` shows it."""
    parts = pub_line.strip().split()
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (IndexError, ValueError):
        raise KeyMaterialError(
            "The SSH public key is not an OpenSSH public key line.",
            "Expected 'ssh-rsa AAAA... comment'; regenerate it with ibreports keygen.",
        ) from None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def ssh_public_from_private(data: bytes) -> str:
    """The public key line stored in clear in an OpenSSH private key file (no passphrase needed).

    The openssh-key-v1 format keeps the public key outside the encrypted section,
    so a backup can be checked without the key passphrase.
    """
    bad = KeyMaterialError(
        "The SSH private key is not in OpenSSH format.", "Regenerate it with ibreports keygen."
    )
    text = data.decode("ascii", "replace")
    # Any PEM-style armor: the body's openssh-key-v1 magic, checked below, is what identifies the format.
    match = re.search(r"-----BEGIN ([A-Z ]+)-----(.*?)-----END \1-----", text, re.S)
    if not match:
        raise bad
    try:
        raw = base64.b64decode("".join(match.group(2).split()), validate=True)
        magic = b"openssh-key-v1\0"
        if not raw.startswith(magic):
            raise ValueError
        pos = len(magic)
        for _ in range(3):  # cipher name, kdf name, kdf options
            (size,) = struct.unpack_from(">I", raw, pos)
            pos += 4 + size
        (count,) = struct.unpack_from(">I", raw, pos)
        (size,) = struct.unpack_from(">I", raw, pos + 4)
        blob = raw[pos + 8 : pos + 8 + size]
        if count != 1 or len(blob) != size:
            raise ValueError
        (tsize,) = struct.unpack_from(">I", blob, 0)
        keytype = blob[4 : 4 + tsize].decode("ascii")
    except (ValueError, struct.error, UnicodeDecodeError):
        raise bad from None
    return f"{keytype} {base64.b64encode(blob).decode()}"


@contextlib.contextmanager
def gnupg_home() -> Iterator[Path]:
    """A throwaway GnuPG home (0700, locked, watched); its agent is stopped and the folder
    removed afterwards, or by the watchdog / the next command's sweep if we are killed."""
    from .pgp import claim_home, release_home

    home, lock = claim_home("ibreports-gpg-")
    try:
        yield home
    finally:
        release_home(home, lock)


def open_gpg(home: Path):
    """A python-gnupg handle on ``home``; a missing or broken gpg binary is a clear error."""
    import gnupg

    try:
        from .pgp import minimal_env

        # A passphrase in our environment (IBREPORTS_KEY_PASSPHRASE) must not reach gpg-agent's.
        return gnupg.GPG(gnupghome=str(home), env=minimal_env())
    except (OSError, ValueError):
        raise KeyMaterialError(
            "The gpg program could not be run.", "Install GnuPG 2.2 or later (apt-get install gnupg)."
        ) from None


def pgp_fingerprints(data: bytes, home: Path | None = None) -> list[str]:
    """Primary-key fingerprints in armored or binary key data, without importing it anywhere."""
    if home is None:
        with gnupg_home() as fresh:
            return pgp_fingerprints(data, fresh)
    keys = open_gpg(home).scan_keys_mem(data)
    return [k["fingerprint"] for k in keys if k.get("fingerprint")]


def folder_fingerprints(files: dict[str, bytes]) -> dict[str, dict[str, str]]:
    """SSH and PGP fingerprints per folder, computed from the bytes; a mismatched pair is refused.

    The SSH one comes from the private key (its public half is stored in clear),
    the PGP one from the key data via a throwaway GnuPG home.
    """
    groups: dict[str, dict[str, bytes]] = {}
    for rel, data in files.items():
        p = PurePosixPath(rel)
        groups.setdefault(str(p.parent) if str(p.parent) != "." else "", {})[p.name] = data
    result: dict[str, dict[str, str]] = {}
    with gnupg_home() as home:
        for folder, members in sorted(groups.items()):
            fps: dict[str, str] = {}
            ssh = set()
            if SSH_PRIVATE in members:
                ssh.add(ssh_fingerprint(ssh_public_from_private(members[SSH_PRIVATE])))
            if SSH_PUBLIC in members:
                ssh.add(ssh_fingerprint(members[SSH_PUBLIC].decode("ascii", "replace")))
            pgp = {tuple(pgp_fingerprints(members[n], home)) for n in (PGP_SECRET, PGP_PUBLIC) if n in members}
            where = f"{folder}/" if folder else ""
            if len(ssh) > 1:
                raise KeyMaterialError(
                    f"{where}{SSH_PUBLIC} does not belong to {where}{SSH_PRIVATE}.", "Fix or regenerate that key pair."
                )
            if len(pgp) > 1 or any(len(t) != 1 for t in pgp):
                raise KeyMaterialError(
                    f"{where}{PGP_SECRET} and {where}{PGP_PUBLIC} do not hold the same single PGP key.",
                    "Fix or regenerate that key pair.",
                )
            if ssh:
                fps["ssh"] = ssh.pop()
            if pgp:
                fps["pgp"] = pgp.pop()[0]
            if fps:
                result[folder] = fps
    return result
