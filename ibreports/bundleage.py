"""Refusing a rollback on ``keys restore``: a bundle older than what it would replace.

Two things a bundle can replace, each with a date nobody can forge without the backup passphrase
(the bundle's ``created`` stamp is inside the authenticated payload) or the key itself (a PGP
key's creation time is covered by its self-signature):

- the bundle it is named as: a dated name (``ibreports-keys-<UTC stamp>.bundle``, what ``keys
  backup`` gives a folder URL, and what a folder URL's restore picks as the newest) whose stamp
  is later than the bundle's own ``created``: an older bundle renamed (or copied) over a newer one;
- the keys already in ``--dir``: other keys (other fingerprints) whose PGP key was made after the
  bundle was: restoring would put keys back that were rotated away.

Either is refused (exit 2) unless ``--allow-older``; the message gives both dates and both sets
of fingerprints, and says which is newer.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .bundlestore import BUNDLE_PREFIX, BUNDLE_SUFFIX
from .errors import KeyMaterialError
from .keyfiles import PGP_PUBLIC, PGP_SECRET, SSH_PRIVATE, SSH_PUBLIC, folder_fingerprints, gnupg_home, open_gpg

# keys backup stamps ``created`` first, then derives the key (scrypt) and names the file: seconds apart.
NAME_SLACK = timedelta(minutes=10)
_DATED = re.compile(re.escape(BUNDLE_PREFIX) + r"(\d{8}T\d{6}Z)" + re.escape(BUNDLE_SUFFIX) + r"$")
ALLOW = "pass --allow-older if you really mean to go back to the older keys"


def check_not_older(url: str, created: str, fingerprints: dict[str, dict[str, str]], folder: Path,
                    files: dict[str, bytes]) -> None:
    """Raise KeyMaterialError when the bundle read from ``url`` (made ``created``, holding keys with
    ``fingerprints``) is older than the bundle it is named as, or than the keys in ``folder``."""
    made = _parse_created(created)
    ours = fingerprints.get("", {})
    if made is None:
        return  # every bundle keys backup writes has one; a payload without it needs the passphrase anyway
    named = _name_stamp(url)
    if named is not None and made < named - NAME_SLACK:
        raise KeyMaterialError(
            f"The key backup {url} is named as made {_show(named)} but was created {_show(made)} "
            f"({_describe(ours)}): it is an older bundle under a newer one's name, and restoring it would roll "
            "the keys back; the bundle that name stands for is newer. Nothing was written.",
            "Find the bundle really made at that time (ibreports keys verify --from PATH shows when each was "
            f"made), or {ALLOW}.",
        )
    present = _present(folder, files)
    if present is None:
        return
    theirs, born = present
    if theirs == ours or born is None or born <= made:
        return
    raise KeyMaterialError(
        f"The key backup {url} was created {_show(made)} ({_describe(ours)}), before the keys it would replace "
        f"in {folder} were made {_show(born)} ({_describe(theirs)}): the keys in {folder} are newer, and "
        "restoring would roll them back. Nothing was written.",
        f"Keep the newer keys, or restore a backup made after {_show(born)}; or {ALLOW} "
        "(with --force, which moves the newer keys to retired/<timestamp>/).",
    )


def _parse_created(created: str) -> datetime | None:
    try:
        return datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _name_stamp(url: str) -> datetime | None:
    match = _DATED.search(url.rsplit("/", 1)[-1])
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _present(folder: Path, files: dict[str, bytes]) -> tuple[dict[str, str], datetime | None] | None:
    """Fingerprints of the keys in ``folder`` that the bundle would replace, and when its PGP key was
    made; None when the folder holds none of the bundle's top-level key files (nothing is replaced)."""
    names = [n for n in (SSH_PRIVATE, SSH_PUBLIC, PGP_SECRET, PGP_PUBLIC)
             if n in files and (folder / n).is_file() and not (folder / n).is_symlink()]
    if not names:
        return None
    current = {n: (folder / n).read_bytes() for n in names}
    if all(current[n] == files[n] for n in names):
        return None  # the same keys: nothing to roll back
    try:
        fingerprints = folder_fingerprints(current).get("", {})
    except KeyMaterialError:
        return None  # a broken pair in the folder: the conflict check names it
    pgp = next((current[n] for n in (PGP_SECRET, PGP_PUBLIC) if n in current), None)
    return fingerprints, _pgp_created(pgp) if pgp is not None else None


def _pgp_created(data: bytes) -> datetime | None:
    with gnupg_home() as home:
        keys = open_gpg(home).scan_keys_mem(data)
    stamps = [int(k["date"]) for k in keys if str(k.get("date", "")).isdigit()]
    return datetime.fromtimestamp(max(stamps), timezone.utc) if stamps else None


def _show(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _describe(fingerprints: dict[str, str]) -> str:
    parts = [f"sFTP {fingerprints['ssh']}" if "ssh" in fingerprints else "",
             f"PGP {fingerprints['pgp']}" if "pgp" in fingerprints else ""]
    return ", ".join(p for p in parts if p) or "no keys"
