"""``ibreports verify``: re-read archived statements and originals against the SHA-256 recorded at write time.

What "recorded" means per archive:

- S3: the object's ``x-amz-meta-sha256`` (every write since verify exists), else the store's own
  ``ChecksumSHA256`` (full-object for single PUTs; for multipart objects the checksum of the
  parts' checksums, recomputed from the part size the upload used);
- local folder: the ``user.ibreports.sha256`` extended attribute set when the file was written.

An object without either is reported as unrecorded (not a failure: nothing says what it should
be). A key a run record says was archived but the archive does not hold is missing. Objects
stream through a 1 MiB buffer, a few at a time: memory stays bounded whatever their size.

JSON (``--json``)::

    {"archive": str, "since": "YYYY-MM-DD" | null, "checked": int, "bytes": int, "ok": int,
     "mismatch": [key], "missing": [key], "unrecorded": [key], "errors": {key: "cause"}}
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

from .threads import ContextThreadPool
from . import statements
from .archive import Archive, open_archive
from .config import ArchiveConfig
from .errors import IbreportsError
from .files import CHUNK
from .report import DONE

Progress = Callable[[int, int, int], None]  # (objects done, objects in total, bytes read)
FOLDERS = ("statements/", "encrypted/")
WORKERS = 4


@dataclass
class VerifyResult:
    archive: str
    since: date | None = None
    checked: int = 0
    bytes: int = 0
    ok: int = 0
    mismatch: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # key -> why it could not be read

    @property
    def exit_code(self) -> int:
        """1 on any mismatch, missing or unreadable object, else 0."""
        return 1 if self.mismatch or self.missing or self.errors else 0

    def to_dict(self) -> dict:
        return {"archive": self.archive, "since": self.since.isoformat() if self.since else None,
                "checked": self.checked, "bytes": self.bytes, "ok": self.ok, "mismatch": sorted(self.mismatch),
                "missing": sorted(self.missing), "unrecorded": sorted(self.unrecorded), "errors": dict(self.errors)}


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


def verify_archive(config: ArchiveConfig, since: date | None = None, progress: Progress | None = None) -> VerifyResult:
    """Check every archived statement and original (dated from ``since``): one listing, one read each."""
    archive = open_archive(config)
    inventory = archive.inventory()
    result = VerifyResult(archive.description, since)
    keys = sorted(k for k in inventory if k.startswith(FOLDERS) and in_range(k, since))
    result.missing = sorted(k for k in recorded_keys(archive, inventory) - set(inventory) if in_range(k, since))
    check = _check_s3 if config.is_s3 else _check_local
    done = 0
    with ContextThreadPool(WORKERS, thread_name_prefix="verify") as pool:
        for key, (status, size, detail) in zip(keys, pool.map(lambda k: _safely(check, archive, k), keys)):
            done += 1
            result.checked += 1
            result.bytes += size
            if status == "ok":
                result.ok += 1
            elif status == "missing":
                result.missing.append(key)
            elif status == "error":
                result.errors[key] = detail
            else:
                getattr(result, status).append(key)
            if progress:
                progress(done, len(keys), result.bytes)
    return result


def recorded_keys(archive: Archive, inventory: dict) -> set[str]:
    """Statement and original keys the run records say were archived (one read per run record)."""
    keys: set[str] = set()
    runs = [k for k in inventory if k.startswith("runs/") and k.endswith(".json")]
    with tempfile.TemporaryDirectory(prefix="ibreports-verify-") as tmp:
        for i, key in enumerate(runs):
            dest = Path(tmp) / f"{i}.json"
            try:
                archive.get(key, dest)
                record = json.loads(dest.read_bytes())
                for item in record.get("files", []):
                    if item.get("outcome") in DONE:
                        keys.update(k for k in item.get("archive_keys", []) if isinstance(k, str) and k.startswith(FOLDERS))
            except (IbreportsError, OSError, ValueError, TypeError, AttributeError):
                continue  # an unreadable run record says nothing about what should be there
            finally:
                dest.unlink(missing_ok=True)
    return keys


def _safely(check, archive, key: str) -> tuple[str, int, str]:
    try:
        return check(archive, key)
    except IbreportsError as exc:
        return "error", 0, str(exc)
    except OSError as exc:
        return "error", 0, f"could not be read: {exc.strerror or exc}"


def _check_local(archive, key: str) -> tuple[str, int, str]:
    from .archive.local import SHA256_XATTR

    try:
        parent, name = archive._parent(key, create=False)  # through real folders of ours, never a link
    except FileNotFoundError:
        return "missing", 0, ""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except FileNotFoundError:
        return "missing", 0, ""
    finally:
        os.close(parent)
    digest, size = hashlib.sha256(), 0
    with os.fdopen(fd, "rb") as fh:
        try:
            expected = os.getxattr(fh.fileno(), SHA256_XATTR).decode("ascii", "replace")
        except OSError:
            expected = None
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    if expected is None:
        return "unrecorded", size, ""
    return ("ok" if digest.hexdigest() == expected.lower() else "mismatch"), size, ""


def _check_s3(archive, key: str) -> tuple[str, int, str]:
    from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError

    from .archive.s3 import SHA256_META, multipart_part_size
    from .archive.s3client import error_code

    name = archive._name(key)
    digest, parts, size = hashlib.sha256(), [], 0
    try:
        reply = archive.client.get_object(Bucket=archive.bucket, Key=name, ChecksumMode="ENABLED")
        stored = reply.get("ChecksumSHA256") or ""
        part_size = multipart_part_size(reply.get("ContentLength", 0), archive.part_size)
        part, filled = hashlib.sha256(), 0
        body = reply["Body"]
        with body:
            for chunk in body.iter_chunks(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                view = memoryview(chunk)
                while view:  # the parts' own digests, for a multipart object's composite checksum
                    take = view[: part_size - filled]
                    part.update(take)
                    filled += len(take)
                    view = view[len(take):]
                    if filled == part_size:
                        parts.append(part.digest())
                        part, filled = hashlib.sha256(), 0
        if filled or not parts:
            parts.append(part.digest())
    except FlexibleChecksumError:
        return "mismatch", size, ""
    except ClientError as exc:
        if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return "missing", 0, ""
        raise archive._error(exc, "get", name) from None
    except BotoCoreError as exc:
        raise archive._error(exc, "get", name) from None
    expected = (reply.get("Metadata") or {}).get(SHA256_META)
    if expected:
        return ("ok" if digest.hexdigest() == expected.lower() else "mismatch"), size, ""
    if stored.endswith(f"-{len(parts)}") and "-" in stored:
        actual = _b64(hashlib.sha256(b"".join(parts)).digest()) + f"-{len(parts)}"
    elif stored and "-" not in stored:
        actual = _b64(digest.digest())
    else:
        return "unrecorded", size, ""
    return ("ok" if actual == stored else "mismatch"), size, ""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def format_result(result: VerifyResult) -> str:
    """Problems first, then one summary line."""
    lines = [f"MISMATCH {k}: its content no longer matches the SHA-256 recorded when it was written" for k in sorted(result.mismatch)]
    lines += [f"MISSING  {k}: a run record says it was archived, the archive does not hold it" for k in sorted(result.missing)]
    lines += [f"ERROR    {k}: {why}" for k, why in sorted(result.errors.items())]
    if result.unrecorded:
        lines.append(f"{len(result.unrecorded)} object(s) without a recorded SHA-256 (written before verify existed, "
                     "or copied without extended attributes), e.g. " + ", ".join(sorted(result.unrecorded)[:3]))
    problems = len(result.mismatch) + len(result.missing) + len(result.errors)
    since = f" dated from {result.since}" if result.since else ""
    lines.append(f"verify {result.archive}: {result.checked} object(s){since}, {result.bytes / 1e6:.1f} MB read, "
                 f"{result.ok} ok, {len(result.mismatch)} mismatch, {len(result.missing)} missing"
                 + (f", {len(result.errors)} unreadable" if result.errors else "")
                 + (" - restore them from a backup, or fetch them again while the servers hold them." if problems else "."))
    return "\n".join(lines)
