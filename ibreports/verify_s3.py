"""The S3 side of ``ibreports verify``: the listing of object versions, and reading one object (or one
version) with its SHA-256, the hash recorded with it and the store's own checksum."""

from __future__ import annotations

import base64
import hashlib

from .files import CHUNK

DELETE_MARKER = "delete-marker"  # in a key's version list


def list_versions(archive) -> tuple[dict[str, int], dict[str, list[str]], set[str]] | None:
    """Every version under the prefix, one paginated listing: (key -> size of its newest version,
    key -> version ids oldest first, keys whose newest entry is a delete marker); None without the
    permission (s3:ListBucketVersions) or on a store that has no such listing."""
    from botocore.exceptions import BotoCoreError, ClientError

    from .archive.s3client import error_code

    start = f"{archive.prefix}/" if archive.prefix else ""
    versions: dict[str, list[str]] = {}
    newest: dict[str, tuple[bool, int]] = {}  # key -> (is a delete marker, size)
    try:
        for page in archive.client.get_paginator("list_object_versions").paginate(
                Bucket=archive.bucket, Prefix=start, PaginationConfig={"PageSize": archive.page_size}):
            for v in page.get("Versions", []):
                key = v["Key"][len(start):]
                if key and not key.endswith("/"):
                    versions.setdefault(key, []).insert(0, v["VersionId"])  # listed newest first
                    if v.get("IsLatest"):
                        newest[key] = (False, v["Size"])
            for m in page.get("DeleteMarkers", []):
                key = m["Key"][len(start):]
                if key and not key.endswith("/"):
                    versions.setdefault(key, []).insert(0, DELETE_MARKER)
                    if m.get("IsLatest"):
                        newest[key] = (True, 0)
    except ClientError as exc:
        if error_code(exc) not in ("AccessDenied", "403", "NotImplemented", "MethodNotAllowed"):
            raise archive._error(exc, "list", start) from None
        return None
    except BotoCoreError as exc:
        raise archive._error(exc, "list", start) from None
    objects = {k: size for k, (marker, size) in newest.items() if not marker}
    return objects, versions, {k for k, (marker, _) in newest.items() if marker}


def read(archive, name: str, version: str | None = None) -> tuple[str, int, str, str | None]:
    """(status, size, SHA-256 of the content, the hash recorded with the object) of one GET."""
    from .archive.s3 import SHA256_META, multipart_part_size

    extra = {"VersionId": version} if version else {}
    reply = archive.client.get_object(Bucket=archive.bucket, Key=name, ChecksumMode="ENABLED", **extra)
    stored = reply.get("ChecksumSHA256") or ""
    part_size = multipart_part_size(reply.get("ContentLength", 0), archive.part_size)
    digest, parts, size = hashlib.sha256(), [], 0
    part, filled = hashlib.sha256(), 0
    body = reply["Body"]
    with body:  # (its __enter__ returns the raw stream, without iter_chunks)
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
    actual = digest.hexdigest()
    own = (reply.get("Metadata") or {}).get(SHA256_META)
    if own is None and stored:  # written before the metadata existed: the store's own checksum
        if "-" in stored:
            ok = stored == _b64(hashlib.sha256(b"".join(parts)).digest()) + f"-{len(parts)}"
        else:
            ok = stored == _b64(bytes.fromhex(actual))
        if not ok:
            return "mismatch", size, actual, None
        own = actual
    return "read", size, actual, own


def restore_hint(archive, name: str, versions: list[str], expected: str | None) -> str:
    """Whether the oldest version (the one ibreports wrote) still matches the ledger, and how to go back to it."""
    first, newer = versions[0], [v for v in versions[1:] if v != DELETE_MARKER]
    if first == DELETE_MARKER:
        return ""
    try:
        _status, _size, actual, _own = read(archive, name, first)
    except Exception:  # noqa: BLE001 - a detail of the report, never its verdict
        return ""
    if expected and actual == expected:
        undo = "; ".join(f"aws s3api delete-object --bucket {archive.bucket} --key '{name}' --version-id {v}"
                         for v in newer[:3])
        return (f"; its oldest version {first} is the original and matches the ledger: keep a copy of the newer "
                f"version(s) for the investigation, then remove them ({undo})")
    return f"; its oldest version {first} does not match the ledger either"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
