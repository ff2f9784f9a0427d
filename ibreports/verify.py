"""``ibreports verify``: every archived object against the ledger the archive itself keeps.

The ledger is what ibreports recorded when it wrote each object:

- every run record (``runs/...json``) lists, in ``written``, the key and SHA-256 of each object
  that run created (statements, encrypted originals, quarantined conflicts, conflict records), or
  compared with a fresh delivery and found equal (``fetch --force``);
- a conflict resolution (``conflicts/...resolution.json``) acknowledges the object it left in place;
- each object carries its own copy of the hash (S3 ``x-amz-meta-sha256``; local extended attribute
  ``user.ibreports.sha256``): a missing one is a failure, never a pass;
- on S3 the listing is of object *versions*: a key with more than one version (or a delete marker)
  was overwritten or deleted after ibreports wrote it (its oldest version is the original).

Under ``statements/``, ``encrypted/`` and ``conflicts/`` an object is then one of: ok; **mismatch**
(content differs from the recorded SHA-256); **replaced** (a newer version, or a new file in its
place without the recorded attribute); **unrecorded** (its own hash record is missing); **planted**
(no ledger entry knows it: put there by something else); **missing** (recorded, gone). Open
conflicts are listed too. Run records written before the ledger existed name keys without hashes:
those objects are checked against their own hash record only.

One listing (object versions on S3), one read per run record, one read per object: no HEAD.

JSON (``--json``)::

    {"archive": str, "since": "YYYY-MM-DD" | null, "checked": int, "bytes": int, "ok": int,
     "mismatch": [key], "replaced": [key], "unrecorded": [key], "planted": [key], "missing": [key],
     "errors": {key: "cause"}, "conflicts": [id], "ledger": {"runs": int, "recorded": int},
     "notes": [str]}
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

from . import conflicts, statements
from .archive import Archive, open_archive, validate_key
from .config import ArchiveConfig
from .errors import IbreportsError
from .files import CHUNK
from .threads import ContextThreadPool
from .report import DONE

Progress = Callable[[int, int, int], None]  # (objects done, objects in total, bytes read)
FOLDERS = ("statements/", "encrypted/", "conflicts/")
WORKERS = 4
PROBLEMS = ("mismatch", "replaced", "unrecorded", "planted", "missing")


@dataclass
class VerifyResult:
    archive: str
    since: date | None = None
    checked: int = 0
    bytes: int = 0
    ok: int = 0
    mismatch: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)
    planted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # key -> why it could not be read
    conflicts: list[str] = field(default_factory=list)  # open conflict ids
    details: dict[str, str] = field(default_factory=dict)  # key -> more about its problem
    runs: int = 0
    recorded: int = 0
    notes: list[str] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)  # known by a resolution only (no hash of its own)

    @property
    def exit_code(self) -> int:
        """1 on any problem or open conflict, else 0."""
        return 1 if any(getattr(self, p) for p in PROBLEMS) or self.errors or self.conflicts else 0

    def to_dict(self) -> dict:
        doc = {"archive": self.archive, "since": self.since.isoformat() if self.since else None,
               "checked": self.checked, "bytes": self.bytes, "ok": self.ok, "errors": dict(self.errors),
               "conflicts": list(self.conflicts), "ledger": {"runs": self.runs, "recorded": self.recorded},
               "notes": list(self.notes)}
        doc.update({p: sorted(getattr(self, p)) for p in PROBLEMS})
        return doc


def shown(key: str) -> str:
    """A key as text that can always be printed: undecodable bytes of a file name as ``\\xNN``."""
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def in_range(key: str, since: date | None) -> bool:
    """Whether ``key`` (``<folder>/<account or source>/<YYYY>/<MM>/<name>``) is dated on or after ``since``."""
    if since is None:
        return True
    parts = key.split("/")
    try:
        month = (int(parts[2]), int(parts[3]))
    except (IndexError, ValueError):
        return True  # no date in the key: checked rather than skipped
    if month != (since.year, since.month):
        return month > (since.year, since.month)
    st = statements.parse(parts[-1], 0)
    return not st.parsed or st.statement_date >= since


@dataclass
class Listing:
    objects: dict[str, int]  # key -> size of what a reader gets
    versions: dict[str, list[str]] = field(default_factory=dict)  # S3: key -> version ids, oldest first
    deleted: set[str] = field(default_factory=set)  # S3: the newest entry is a delete marker
    history: bool = False  # versions were listed


def verify_archive(config: ArchiveConfig, since: date | None = None, progress: Progress | None = None) -> VerifyResult:
    """Check every archived object (dated from ``since``) against the ledger; one listing, one read each."""
    archive = open_archive(config)
    listing = _list_s3(archive) if config.is_s3 else Listing({k: i.size for k, i in archive.inventory().items()})
    result = VerifyResult(archive.description, since)
    if config.is_s3 and not listing.history:
        result.notes.append("the bucket's version history could not be listed (s3:ListBucketVersions): a plain "
                            "overwrite is found by its content and metadata only")
    hashes, legacy = read_ledger(archive, listing.objects, result)
    result.recorded = len(hashes)
    result.conflicts = [conflicts.conflict_id(k) for k in conflicts.open_records(listing.objects)]
    for key in sorted(listing.objects):  # the ledger itself: a rewritten run record is a replacement
        if key.startswith("runs/") and len(listing.versions.get(key, ())) > 1:
            result.replaced.append(key)
            result.details[key] = f"{len(listing.versions[key])} versions: this run record was rewritten"
    known = set(hashes) | legacy
    keys = []
    for key in sorted(listing.objects):
        if not key.startswith(FOLDERS) or not in_range(key, since):
            continue
        if not _valid(key) or not (key in known or key.endswith(conflicts.RESOLUTION)):
            result.planted.append(shown(key))
            continue
        keys.append(key)
    for key, why in sorted(getattr(archive, "not_counted", {}).items()):  # a local folder's links, others' files
        if key.startswith(FOLDERS) and in_range(key, since):
            result.planted.append(shown(key))
            result.details[shown(key)] = why
    for key in sorted(known - set(listing.objects)):
        if key.startswith(FOLDERS) and in_range(key, since):
            result.missing.append(key)
            if key in listing.deleted:
                result.details[key] = "deleted: a delete marker hides its versions"
    local = None if config.is_s3 else _LocalReader(archive)

    def one(key: str):
        try:
            if local is not None:
                status, size, detail = local.check(key, hashes.get(key))
            else:
                status, size, detail = _check_s3(archive, key, hashes.get(key), listing.versions.get(key, []))
            if status == "unrecorded" and key in result.acknowledged:
                return "ok", size, ""  # its resolution is its record (and the content matched it)
            return status, size, detail
        except IbreportsError as exc:
            return "error", 0, str(exc)
        except OSError as exc:
            return "error", 0, f"could not be read: {exc.strerror or exc}"

    # S3: a few GETs at once hide the latency; a local folder is read in order (threads only cost there).
    pool = ContextThreadPool(WORKERS, thread_name_prefix="verify") if local is None else None
    try:
        verdicts = pool.map(one, keys) if pool else map(one, keys)
        for done, (key, (status, size, detail)) in enumerate(zip(keys, verdicts), start=1):
            result.checked += 1
            result.bytes += size
            if status == "ok":
                result.ok += 1
            elif status == "error":
                result.errors[key] = detail
            else:
                getattr(result, status).append(key)
                if detail:
                    result.details[key] = detail
            if progress:
                progress(done, len(keys), result.bytes)
    finally:
        if pool:
            pool.shutdown()
        if local is not None:
            local.close()
    return result


def read_ledger(archive: Archive, objects: dict[str, int], result: VerifyResult) -> tuple[dict[str, str], set[str]]:
    """(key -> recorded SHA-256, keys named without a hash) from every run record and resolution."""
    runs = sorted(k for k in objects if k.startswith("runs/") and k.endswith(".json"))
    resolutions = sorted(k for k in objects if k.startswith(conflicts.PREFIX) and k.endswith(conflicts.RESOLUTION))
    result.runs = len(runs)
    hashes: dict[str, str] = {}
    acknowledged: dict[str, str] = {}
    legacy: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="ibreports-verify-") as tmp:
        with ContextThreadPool(WORKERS, thread_name_prefix="verify-ledger") as pool:
            records = list(pool.map(lambda k: conflicts.read_json(archive, k, Path(tmp)), runs + resolutions))
    for key, record in zip(runs + resolutions, records):
        if not record:
            result.errors[key] = "this ledger record cannot be read or is not a JSON object: what it recorded is unknown"
            continue
        try:
            if key in resolutions:
                acknowledged.update({k: v for k, v in (record.get("archived") or {}).items()
                                     if isinstance(k, str) and isinstance(v, str) and v})
                continue
            for k, v in (record.get("written") or {}).items():
                if isinstance(k, str) and isinstance(v, str):
                    hashes.setdefault(k, v.lower())
            for item in record.get("files") or []:
                if item.get("outcome") in DONE:
                    legacy.update(k for k in item.get("archive_keys") or [] if isinstance(k, str))
                elif item.get("code") == "conflict":  # a delivery kept apart (before conflict records, too)
                    legacy.update(k for k in item.get("archive_keys") or []
                                  if isinstance(k, str) and k.startswith(conflicts.PREFIX))
        except (AttributeError, TypeError):
            result.errors[key] = "this ledger record is not in the run-record format: what it recorded is unknown"
    for k, v in acknowledged.items():
        if k not in hashes:  # something ibreports did not write, which a person's resolution left in place
            hashes[k] = v.lower()
            result.acknowledged.add(k)
    return hashes, legacy - set(hashes)


def _valid(key: str) -> bool:
    try:
        validate_key(key)
    except IbreportsError:
        return False
    return True


def _judge(actual: str, own: str | None, expected: str | None, replaced: bool) -> tuple[str, str]:
    """The verdict from the content's SHA-256, the object's own hash record and the ledger's."""
    if replaced:
        return "replaced", ""
    if expected is not None and actual != expected:
        if own is None:
            return "replaced", "a new object without the recorded SHA-256 took its place, with other content"
        return "mismatch", "its content differs from the SHA-256 the ledger recorded when it was written"
    if own is None:
        return "unrecorded", "the SHA-256 recorded with the object is gone (copied or rewritten without it)"
    if actual != own.lower():
        return "mismatch", "its content differs from the SHA-256 recorded with it"
    return "ok", ""


class _LocalReader:
    """Reads a local archive's objects in key order, keeping the current folder open (one descent per folder)."""

    def __init__(self, archive) -> None:
        self.archive, self.folder, self.fd = archive, None, -1

    def check(self, key: str, expected: str | None) -> tuple[str, int, str]:
        from .archive.local import SHA256_XATTR

        folder, _, name = key.rpartition("/")
        if folder != self.folder:
            self.close()
            try:
                self.fd, _ = self.archive._parent(key, create=False)  # through real folders of ours, never a link
            except FileNotFoundError:
                return "missing", 0, ""
            self.folder = folder
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            return "missing", 0, ""
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "rb") as fh:
            try:
                own = os.getxattr(fh.fileno(), SHA256_XATTR).decode("ascii", "replace")
            except OSError:
                own = None
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        status, detail = _judge(digest.hexdigest(), own, expected, False)
        return status, size, detail

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.folder, self.fd = None, -1


def _list_s3(archive) -> Listing:
    """One listing of every version (verify_s3); without the permission, the plain listing."""
    from .verify_s3 import list_versions

    found = list_versions(archive)
    if found is None:
        return Listing({k: i.size for k, i in archive.inventory().items()})
    objects, versions, deleted = found
    return Listing(objects, versions, deleted, history=True)


def _check_s3(archive, key: str, expected: str | None, versions: list[str]) -> tuple[str, int, str]:
    from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError

    from .archive.s3client import error_code
    from .verify_s3 import read, restore_hint

    name = archive._name(key)
    replaced = len(versions) > 1
    try:
        status, size, actual, own = read(archive, name)
    except FlexibleChecksumError:
        return "mismatch", 0, "the store's own checksum does not match the content"
    except ClientError as exc:
        if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return "missing", 0, ""
        raise archive._error(exc, "get", name) from None
    except BotoCoreError as exc:
        raise archive._error(exc, "get", name) from None
    if status == "mismatch":
        return status, size, "its content differs from the store's own checksum"
    verdict, detail = _judge(actual, own, expected, replaced)
    if verdict == "replaced" and replaced:
        detail = f"{len(versions)} versions: it was overwritten after ibreports wrote it" + restore_hint(
            archive, name, versions, expected)
    return verdict, size, detail


LABELS = {
    "replaced": "REPLACED {k}: {d}",
    "mismatch": "MISMATCH {k}: {d}",
    "unrecorded": "UNRECORDED {k}: {d}",
    "planted": "PLANTED  {k}: no run record or resolution knows this object: something other than ibreports put it there",
    "missing": "MISSING  {k}: the ledger says it was archived, the archive does not hold it",
}


def format_result(result: VerifyResult) -> str:
    """Problems first, then open conflicts, then one summary line."""
    lines = []
    for problem in ("replaced", "mismatch", "unrecorded", "planted", "missing"):
        for key in sorted(getattr(result, problem)):
            detail = result.details.get(key, "")
            text = LABELS[problem].format(k=key, d=detail or "see docs/coverage.md")
            lines.append(text if problem not in ("missing", "planted") or not detail else f"{text} ({detail})")
    lines += [f"ERROR    {shown(k)}: {why}" for k, why in sorted(result.errors.items())]
    lines += [f"CONFLICT {c}: open: see `ibreports conflicts list`, then `ibreports conflicts resolve`"
              for c in result.conflicts]
    lines += [f"note: {n}" for n in result.notes]
    counts = ", ".join(f"{len(getattr(result, p))} {p}" for p in PROBLEMS)
    bad = any(getattr(result, p) for p in PROBLEMS) or result.errors
    since = f" dated from {result.since}" if result.since else ""
    lines.append(f"verify {result.archive}: {result.checked} object(s){since}, {result.bytes / 1e6:.1f} MB read, "
                 f"{result.ok} ok, {counts}"
                 + (f", {len(result.errors)} unreadable" if result.errors else "")
                 + (f", {len(result.conflicts)} open conflict(s)" if result.conflicts else "")
                 + (" - restore them from a backup (S3: their original version), or fetch them again while the "
                    "servers hold them." if bad else "."))
    return "\n".join(lines)
