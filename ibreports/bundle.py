"""Encrypted, integrity-checked backups of the key folder (``keys backup`` / ``keys restore``).

Bundle = header + AES-256-GCM ciphertext. The header (magic, version, scrypt
parameters, salt, nonce) is the AAD, so none of it can be altered unnoticed. The
plaintext is JSON: every file of the key folder (``retired/`` included) with its
sha256, and a manifest of the SSH and PGP fingerprints per folder. Restore checks
the tag, every sha256 and every fingerprint, recomputed from the restored bytes,
before it writes a single byte.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .config import ArchiveConfig
from .bundleage import check_not_older
from .bundlestore import default_name, newest_bundle, read_bundle, upload_bundle
from .errors import KeyMaterialError
from .keyfiles import (
    RETIRED, check_passphrase, commit, discard, folder_fingerprints, is_private, make_private_dir, refuse_links, retire,
    sha256_hex, stage_file, tighten_dir, write_atomic,
)

MAGIC = b"IBRKEYS\0"
VERSION = 1
KDF_SCRYPT = 1
SCRYPT_LOG2N, SCRYPT_R, SCRYPT_P = 17, 8, 1  # 128 MiB, about 0.35 s here
_HEADER = struct.Struct(">8sBBBII16s12s")  # magic, version, kdf, log2(n), r, p, salt, nonce
MAX_FILES, MAX_BYTES = 1000, 64 * 1024 * 1024
_NOTHING = "Use another backup; nothing was written."
_WRONG = KeyMaterialError(
    "The key backup could not be decrypted: wrong backup passphrase, or the file was modified or damaged.",
    "Check IBREPORTS_BACKUP_PASSPHRASE (or --passphrase-file) and that you picked the right backup; "
    "nothing was written.",
)


@dataclass
class BackupManifest:
    """What a bundle holds: file sha256s and fingerprints per folder ('' = the key folder itself)."""

    created: str
    files: dict[str, str]
    fingerprints: dict[str, dict[str, str]]
    url: str = ""  # the bundle read (the newest one when a folder URL was given)


@dataclass
class BackupReport:
    url: str
    files: list[str]
    fingerprints: dict[str, dict[str, str]]
    size: int


@dataclass
class RestoreReport:
    dir: Path
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    retired: Path | None = None
    fingerprints: dict[str, dict[str, str]] = field(default_factory=dict)
    folder_note: str = ""  # the key folder's mode was tightened, or could not be
    url: str = ""  # the bundle read (the newest one when a folder URL was given)
    created: str = ""  # when that bundle was made (its authenticated stamp)


def backup_keys(
    dir: Path, url: str, backup_passphrase: str, archive_config: ArchiveConfig | None = None
) -> BackupReport:
    """Encrypt every file of ``dir`` into one bundle at ``url`` (local path or s3://bucket/key)."""
    folder = Path(dir)
    check_passphrase(backup_passphrase, "backup passphrase")
    files = _collect(folder)
    fingerprints = folder_fingerprints(files)
    if not fingerprints:
        raise KeyMaterialError(f"No keys found in {folder}.", "Generate them first: ibreports keygen --dir ...")
    payload = json.dumps({
        "format": "ibreports-keys", "version": VERSION,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": {rel: {"sha256": sha256_hex(d), "data": base64.b64encode(d).decode()}
                  for rel, d in files.items()},
        "fingerprints": fingerprints,
    }, sort_keys=True).encode()
    blob = _seal(payload, backup_passphrase)
    target = default_name(url)
    if target.startswith("s3://"):
        upload_bundle(archive_config, target, blob)
    else:
        path = Path(target).absolute()
        if path.is_relative_to(folder.absolute()):
            raise KeyMaterialError(
                f"The backup {path} would be inside the key folder {folder}.",
                "Back up to another disk or to s3://; a backup beside the keys is lost with them.",
            )
        make_private_dir(path.parent)
        try:
            write_atomic(path, blob, 0o600)
        except OSError as exc:
            raise KeyMaterialError(
                f"The backup cannot be written to {path} ({exc.strerror}).", "Choose another --to."
            ) from None
    return BackupReport(url=target, files=sorted(files), fingerprints=fingerprints, size=len(blob))


def verify_backup(url: str, backup_passphrase: str, archive_config: ArchiveConfig | None = None) -> BackupManifest:
    """Download, decrypt and check a bundle (tag, sha256s, fingerprints); write nothing."""
    manifest, _ = _open_bundle(url, backup_passphrase, archive_config)
    return manifest


def restore_keys(
    url: str, dir: Path, backup_passphrase: str, archive_config: ArchiveConfig | None = None, force: bool = False,
    allow_older: bool = False,
) -> RestoreReport:
    """Restore a bundle into ``dir`` after every check passed.

    Files identical to the bundle's are left alone. A different existing file is a
    refusal unless ``force``, which moves it to ``dir/retired/<timestamp>/`` first.
    A bundle older than what it replaces (the newer bundle its dated name stands for, or newer
    keys in ``dir``) is a refusal unless ``allow_older`` (bundleage.py); ``force`` alone does not
    allow it, since a rollback over existing keys always needs ``force``.
    """
    folder = Path(dir)
    manifest, files = _open_bundle(url, backup_passphrase, archive_config)
    if not allow_older:
        check_not_older(manifest.url, manifest.created, manifest.fingerprints, folder, files)
    report = RestoreReport(dir=folder, fingerprints=manifest.fingerprints, url=manifest.url, created=manifest.created)
    refuse_links(folder, [*files, f"{RETIRED}/x"])  # e.g. retired -> elsewhere: never written through
    conflicts: list[str] = []
    for rel, data in files.items():
        target = folder / rel
        if target.is_symlink() or (target.exists() and not target.is_file()):
            conflicts.append(rel)
        elif target.exists():
            if target.read_bytes() == data:
                report.unchanged.append(rel)
            else:
                conflicts.append(rel)
    if conflicts and not force:
        raise KeyMaterialError(
            f"{folder} already holds different files: {', '.join(sorted(conflicts)[:8])}"
            f"{' ...' if len(conflicts) > 8 else ''}.",
            "Restore into an empty --dir, or pass --force to move those files to retired/<timestamp>/ first.",
        )
    todo = {rel: data for rel, data in files.items() if rel not in report.unchanged}
    staged: list[Path] = []
    try:
        make_private_dir(folder)
        report.folder_note = tighten_dir(folder)
        refuse_links(folder, [*todo, f"{RETIRED}/x"])  # again, now that only we can change the folder
        for rel in todo:
            make_private_dir((folder / rel).parent)
        for rel, data in todo.items():
            staged.append(stage_file(folder / rel, data, 0o600 if is_private(rel) else 0o644))
        if conflicts:
            report.retired = retire(folder, conflicts)
        for tmp, rel in zip(staged, todo):
            commit(tmp, folder / rel)
    except BaseException as exc:
        discard(staged)
        if isinstance(exc, OSError):
            raise KeyMaterialError(
                f"The keys could not be written to {folder} ({exc.strerror}).", "Check the folder's permissions."
            ) from None
        raise
    report.written = sorted(todo)
    return report


def _collect(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        raise KeyMaterialError(f"The key folder {folder} does not exist.", "Pass the right --dir.")
    files: dict[str, bytes] = {}
    total = 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        # Hidden names are temporary files (ours) or VCS placeholders, not keys.
        if any(part.startswith(".") for part in PurePosixPath(rel).parts) or path.is_symlink() or not path.is_file():
            continue
        if not _safe_relpath(rel):
            raise KeyMaterialError(f"{path} cannot be backed up (name or depth).", "Move it out of the key folder.")
        data = path.read_bytes()
        total += len(data)
        files[rel] = data
        if len(files) > MAX_FILES or total > MAX_BYTES:
            raise KeyMaterialError(f"{folder} is too large to be a key folder.", "Point --dir at the keys folder only.")
    return files


def _seal(payload: bytes, passphrase: str) -> bytes:
    salt, nonce = os.urandom(16), os.urandom(12)
    header = _HEADER.pack(MAGIC, VERSION, KDF_SCRYPT, SCRYPT_LOG2N, SCRYPT_R, SCRYPT_P, salt, nonce)
    key = Scrypt(salt=salt, length=32, n=2**SCRYPT_LOG2N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase.encode())
    return header + AESGCM(key).encrypt(nonce, payload, header)


def _unseal(blob: bytes, passphrase: str) -> bytes:
    if len(blob) < _HEADER.size + 16 or not blob.startswith(MAGIC):
        raise KeyMaterialError(
            "This file is not an ibreports key backup.", "Pass the file written by ibreports keys backup."
        )
    magic, version, kdf, log2n, r, p, salt, nonce = _HEADER.unpack_from(blob)
    # Bounded before use: a forged header must not make us burn gigabytes on scrypt.
    if version != VERSION or kdf != KDF_SCRYPT or not (14 <= log2n <= 22 and 1 <= r <= 32 and 1 <= p <= 16):
        raise _WRONG
    header = blob[: _HEADER.size]
    try:
        key = Scrypt(salt=salt, length=32, n=2**log2n, r=r, p=p).derive(passphrase.encode())
        return AESGCM(key).decrypt(nonce, blob[_HEADER.size :], header)
    except (InvalidTag, ValueError, MemoryError):
        raise _WRONG from None


def _open_bundle(
    url: str, passphrase: str, archive_config: ArchiveConfig | None
) -> tuple[BackupManifest, dict[str, bytes]]:
    if not passphrase or "\0" in passphrase:
        raise _WRONG
    url = newest_bundle(url, archive_config)
    plain = _unseal(read_bundle(url, archive_config, 2 * MAX_BYTES), passphrase)
    try:
        payload = json.loads(plain)
        if payload["format"] != "ibreports-keys" or payload["version"] != VERSION:
            raise ValueError
        entries = {
            rel: (base64.b64decode(e["data"], validate=True), str(e["sha256"])) for rel, e in payload["files"].items()
        }
        manifest = payload["fingerprints"]
        created = str(payload.get("created", ""))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise KeyMaterialError("The key backup's contents are malformed.", _NOTHING) from None
    for rel, (data, digest) in entries.items():
        if not _safe_relpath(rel):
            raise KeyMaterialError(f"The backup holds an unsafe path {rel!r}.", _NOTHING)
        if sha256_hex(data) != digest:
            raise KeyMaterialError(f"The backup's copy of {rel} fails its sha256 check.", _NOTHING)
    files = {rel: data for rel, (data, _) in entries.items()}
    recomputed = folder_fingerprints(files)
    if recomputed != manifest:
        raise KeyMaterialError(
            "The keys in the backup do not have the fingerprints its manifest records.", _NOTHING
        )
    sums = {rel: digest for rel, (_, digest) in entries.items()}
    return BackupManifest(created=created, files=sums, fingerprints=recomputed, url=url), files


def _safe_relpath(rel: str) -> bool:
    parts = rel.split("/")
    return (
        0 < len(rel) < 512 and len(parts) <= 4
        and all(p not in ("", ".", "..") and not p.startswith(".") and all(ord(c) >= 32 for c in p) for p in parts)
        and "\\" not in rel
    )
