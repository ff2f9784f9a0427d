"""Conflicts as durable state in the archive: recorded when found, open until a person resolves them.

A conflict is a delivery whose content contradicts what the archive holds at the statement's (or
the encrypted original's) key: a second source delivering the same name with other bytes, a
redelivery, or something already sitting at the key that ibreports did not write. The archived
object is never replaced; the delivery is kept apart (quarantine), beside one record:

- ``conflicts/<source>/<YYYY>/<MM>/<name>.<sha16>``: the delivery as it came (``sha16`` = the first
  16 hex digits of its SHA-256), and ``...<sha16>.statement`` its decrypted statement, if any;
- ``...<sha16>.conflict.json``: the record (both hashes, the source, the time, the run);
- ``...<sha16>.resolution.json``: written by ``ibreports conflicts resolve`` (which copy is right,
  why, who, when). A conflict without it is **open**: fetch, status, coverage and verify exit 1.

Both are created once and never rewritten; nothing under ``conflicts/`` is ever deleted. Whether a
conflict is open follows from the key names alone: one archive listing, no read.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .archive import Archive
from .errors import ArchiveError, ConfigError, IbreportsError

PREFIX = "conflicts/"
RECORD = ".conflict.json"
RESOLUTION = ".resolution.json"
STATEMENT = ".statement"
KEEP = ("archived", "new")


def record_key(quarantine: str) -> str:
    return quarantine + RECORD


def resolution_key(record: str) -> str:
    return record[: -len(RECORD)] + RESOLUTION


def conflict_id(record: str) -> str:
    """What a person types: the quarantine key without ``conflicts/`` (``<source>/<YYYY>/<MM>/<name>.<sha16>``)."""
    return record[len(PREFIX): -len(RECORD)]


def open_records(keys) -> list[str]:
    """Conflict record keys without a resolution, sorted (from a listing alone)."""
    keys = set(keys)
    return sorted(k for k in keys if k.startswith(PREFIX) and k.endswith(RECORD) and resolution_key(k) not in keys)


def open_summaries(keys) -> list[dict]:
    """Open conflicts as far as their keys tell (no read): id, source, delivered file name."""
    found = []
    for record in open_records(keys):
        parts = conflict_id(record).split("/")
        found.append({"id": conflict_id(record), "source": parts[0] if len(parts) == 4 else None,
                      "remote_name": parts[-1].rsplit(".", 1)[0] if len(parts) == 4 else None})
    return found


def open_deliveries(keys) -> set[tuple[str, str]]:
    """(source, remote name) of every open conflict (from a listing): such a file is not archived,
    whatever sits at its keys, so every run compares it again and names the conflict."""
    found = set()
    for record in open_records(keys):
        parts = conflict_id(record).split("/")
        if len(parts) == 4:
            found.add((parts[0], parts[3].rsplit(".", 1)[0]))
    return found


def resolved_deliveries(keys) -> dict[tuple[str, str], int]:
    """(source, remote name) -> size of the kept delivery, for every resolved conflict (from a listing).

    A delivery whose conflict a person resolved is settled: fetch and status count it as archived
    while the server offers the same bytes (same size; the SHA-256 is compared once downloaded)."""
    keys = dict(keys) if isinstance(keys, dict) else {k: None for k in keys}
    found = {}
    for key in keys:
        if not (key.startswith(PREFIX) and key.endswith(RESOLUTION)):
            continue
        quarantine = key[: -len(RESOLUTION)]
        parts = quarantine.split("/")
        if len(parts) != 5 or quarantine not in keys:
            continue
        info = keys[quarantine]
        found[(parts[1], parts[4].rsplit(".", 1)[0])] = getattr(info, "size", -1)
    return found


def new_record(*, quarantine: str, source: str, remote_name: str, statement_date: str, run_id: str,
               key: str, archived_sha256: str, delivered_sha256: str, why: str, kept: dict[str, str]) -> dict:
    """The conflict record: what was found, where both copies are, their SHA-256."""
    return {
        "kind": "conflict", "id": conflict_id(record_key(quarantine)), "source": source,
        "remote_name": remote_name, "statement_date": statement_date, "run_id": run_id,
        "detected": _now(), "key": key, "archived_sha256": archived_sha256,
        "delivered_sha256": delivered_sha256, "why": why, "kept": dict(kept),
    }


def write_once(archive: Archive, key: str, data: dict, folder: Path) -> str:
    """Create ``key`` holding ``data`` as JSON unless it exists: its SHA-256 when written, else ""."""
    fd, name = tempfile.mkstemp(prefix="record-", dir=folder)
    raw = json.dumps(data, indent=1, sort_keys=True).encode()
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        sha256 = hashlib.sha256(raw).hexdigest()
        return sha256 if archive.put(key, Path(name), sha256, {"kind": data.get("kind", "record")}) else ""
    finally:
        Path(name).unlink(missing_ok=True)


@dataclass
class Conflict:
    """One conflict as ``conflicts list`` shows it (plain data)."""

    id: str
    record: str  # its record's key
    open: bool
    data: dict  # the record (empty if unreadable)
    resolution: dict | None = None

    def to_dict(self) -> dict:
        d = self.data
        return {"id": self.id, "open": self.open, "source": d.get("source"), "remote_name": d.get("remote_name"),
                "statement_date": d.get("statement_date"), "key": d.get("key"),
                "archived_sha256": d.get("archived_sha256"), "delivered_sha256": d.get("delivered_sha256"),
                "detected": d.get("detected"), "why": d.get("why"), "kept": d.get("kept", {}),
                "resolution": self.resolution}


def read_json(archive: Archive, key: str, folder: Path) -> dict:
    """A small JSON object of the archive ({} if unreadable)."""
    dest = folder / f"read-{os.urandom(6).hex()}.json"
    try:
        archive.get(key, dest)
        data = json.loads(dest.read_bytes())
        return data if isinstance(data, dict) else {}
    except (IbreportsError, OSError, ValueError):
        return {}
    finally:
        dest.unlink(missing_ok=True)


def list_conflicts(archive: Archive, inventory: dict | None = None, everything: bool = False) -> list[Conflict]:
    """Open conflicts (and resolved ones with ``everything``), their records read (one GET each)."""
    keys = inventory if inventory is not None else archive.inventory(PREFIX)
    records = sorted(k for k in keys if k.startswith(PREFIX) and k.endswith(RECORD))
    found = []
    with tempfile.TemporaryDirectory(prefix="ibreports-conflicts-") as tmp:
        for record in records:
            resolved = resolution_key(record) in keys
            if resolved and not everything:
                continue
            found.append(Conflict(conflict_id(record), record, not resolved, read_json(archive, record, Path(tmp)),
                                  read_json(archive, resolution_key(record), Path(tmp)) if resolved else None))
    return found


def resolve(archive: Archive, conflict: str, keep: str, reason: str) -> dict:
    """Record a person's decision on one open conflict; moves, rewrites and deletes nothing.

    ``keep="archived"``: the object at the key stays the statement, the delivery stays in quarantine.
    ``keep="new"``: the quarantined delivery (and its ``.statement``) is the right copy; the archived
    object stays where it is, untouched (the archive is write-once), acknowledged as superseded.
    """
    if keep not in KEEP:
        raise ConfigError(f"--keep must be 'archived' or 'new', not {keep!r}.", "Say which copy is right.")
    if not reason.strip():
        raise ConfigError("A resolution needs a --reason.", "Say why, e.g. --reason 'IBKR confirmed the redelivery'.")
    ident = conflict.strip().removeprefix(PREFIX).removesuffix(RECORD)
    record = PREFIX + ident + RECORD
    keys = archive.inventory(PREFIX)
    if record not in keys:
        known = ", ".join(conflict_id(k) for k in open_records(keys)[:5]) or "none"
        raise ConfigError(f"There is no conflict {ident!r} in the archive {archive.description}.",
                          f"Run `ibreports conflicts list` for their ids (open now: {known}).")
    if resolution_key(record) in keys:
        raise ConfigError(f"The conflict {ident} is resolved already.",
                          "Its resolution is kept for good; `ibreports conflicts list --all` shows it.")
    with tempfile.TemporaryDirectory(prefix="ibreports-conflicts-") as tmp:
        data = read_json(archive, record, Path(tmp))
        if not data:
            raise ArchiveError(f"The conflict record {record} cannot be read.", "Check the archive, then try again.")
        resolution = {
            "kind": "resolution", "conflict": ident, "keep": keep, "reason": reason.strip(), "resolved": _now(),
            "by": f"{_user()}@{socket.gethostname()}",
            # What stays where it is, and which copy is the statement from now on.
            "archived": {data.get("key", ""): data.get("archived_sha256", "")},
            "authoritative": data.get("key") if keep == "archived" else
            next((k for k in data.get("kept", {}) if k.endswith(STATEMENT)), PREFIX + ident),
        }
        if not write_once(archive, resolution_key(record), resolution, Path(tmp)):
            raise ConfigError(f"The conflict {ident} was resolved meanwhile.", "See `ibreports conflicts list --all`.")
    return resolution


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
