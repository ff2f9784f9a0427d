"""Any S3-compatible store as the archive: checksummed, conditional, encrypted writes.

put() sends the caller's SHA-256 (``ChecksumSHA256``) so the store verifies what it
received, and ``If-None-Match: *`` so the write is create-if-absent on the server:
a 412 means the object already exists, which is how two concurrent runs never
overwrite each other. Stores that answer 501 to conditional writes (older MinIO,
Ceph RGW) fall back to HEAD-then-PUT, which is not atomic; stores that silently
ignore the header overwrite. AWS S3, MinIO >= 2024-11, R2 and moto honour it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from ..config import ArchiveConfig
from ..errors import ArchiveError
from ..files import CHUNK, create_private, is_disk_full, sha256_file
from .objects import ObjectInfo, validate_key
from .s3client import encode_metadata, error_code, make_s3_client, s3_error  # noqa: F401 - re-exported

MiB = 1 << 20
MAX_PARTS = 10_000
SHA256_META = "sha256"  # x-amz-meta-sha256: the whole content's SHA-256 (hex), recorded at write time
CONFLICT_RETRIES = 5  # 409 ConditionalRequestConflict: another writer is mid-flight on the key


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    if not url.startswith("s3://") or not url[5:].split("/")[0]:
        raise ArchiveError(f"{url!r} is not an s3://bucket/path URL.", "Write it as s3://bucket/path.")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")


# One attempt and short time-outs: doctor reports a dead endpoint in seconds, not minutes.
QUICK = {"max_attempts": 1, "connect_timeout": 3, "read_timeout": 10}


class S3Archive:
    """Archive objects under ``s3://bucket/prefix``."""

    features: frozenset[str] = frozenset({"object_lock"})  # S3 Object Lock retention ([archive] object_lock)
    single_put_limit = 16 * MiB  # above this, multipart: memory stays bounded by one part
    part_size = 16 * MiB
    page_size = 1000  # list_objects_v2's maximum

    def __init__(self, config: ArchiveConfig, client=None, quick: bool = False) -> None:
        self.config = config
        self.bucket, self.prefix = parse_s3_url(config.url)
        self.description = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        if config.endpoint_url:
            self.description += f" at {config.endpoint_url}"
        try:
            self.client = client or make_s3_client(config, **(QUICK if quick else {}))
        except BotoCoreError as exc:  # e.g. AWS_PROFILE names a profile that does not exist
            raise s3_error(exc, "open", self.bucket, self.prefix, config.endpoint_url) from None
        self._conditional = True  # False once the store answered 501 to If-None-Match

    def inventory(self, folder: str = "") -> dict[str, ObjectInfo]:
        """Every object under the prefix (or ``folder`` within it), one paginated listing."""
        start = f"{self.prefix}/" if self.prefix else ""
        below = folder.strip("/") + "/" if folder.strip("/") else ""
        found: dict[str, ObjectInfo] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=start + below, PaginationConfig={"PageSize": self.page_size}):
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(start):]
                    if key and not key.endswith("/"):  # skip "folder" markers made by consoles
                        found[key] = ObjectInfo(key, obj["Size"])
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list", start) from None
        return found

    def put(self, key: str, path: Path, sha256: str | None, metadata: dict[str, str], private: bool = False) -> bool:
        """Create ``key`` from ``path`` unless it exists (``private`` is moot: objects are never public)."""
        if sha256 is None:  # the store still gets a checksum to verify what it receives
            sha256 = sha256_file(Path(path))
        # The content's SHA-256 also as metadata: a multipart object's own checksum is one of its parts'.
        return self._upload(self._name(key), path, sha256, {**metadata, SHA256_META: sha256.lower()}, conditional=True)

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None, retain: bool = True) -> None:
        """Write a small object, replacing any existing one (a new version on a versioned bucket).
        ``retain=False``: without ibreports' Object Lock retention (doctor's probe)."""
        name = self._name(key)
        digest = hashlib.sha256(data)
        meta = {**(metadata or {}), SHA256_META: digest.hexdigest()}
        try:
            self.client.put_object(Bucket=self.bucket, Key=name, Body=data, **self._write_args(meta, retain),
                                   ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(digest.digest()))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "put", name) from None

    def get(self, key: str, dest: Path) -> None:
        """Stream ``key`` into a new file ``dest`` (0600); the stored checksum is verified on the way."""
        name = self._name(key)
        fd, size = None, 0
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=name, ChecksumMode="ENABLED")
            body, size = got["Body"], int(got.get("ContentLength") or 0)  # named if it does not fit
            with body:
                fd = create_private(dest)
                for chunk in body.iter_chunks(CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
        except (ClientError, BotoCoreError, OSError) as exc:
            if fd is not None:
                os.close(fd)
                fd = None
                dest.unlink(missing_ok=True)
            if is_disk_full(exc):
                from .local import copy_full

                raise copy_full(exc, key, dest, size) from None
            if isinstance(exc, OSError):
                raise ArchiveError(f"Could not write {dest}: {exc.strerror or exc}.", "Check the local folder.") from None
            raise self._error(exc, "get", name) from None
        finally:
            if fd is not None:
                os.close(fd)

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        name = self._name(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=name)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "delete", name) from None

    # -- internals ---------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _write_args(self, metadata: dict[str, str], retain: bool = True) -> dict:
        args: dict = {"Metadata": encode_metadata(metadata)}
        lock = self.config.object_lock
        if lock is not None and retain:
            # With ChecksumAlgorithm on every write, as S3 requires for Object Lock (instead of Content-MD5).
            args["ObjectLockMode"] = lock.mode
            # Whole seconds on the wire: rounded up, so the retention is never shorter than configured.
            until = datetime.now(timezone.utc) + timedelta(days=lock.days, seconds=1)
            args["ObjectLockRetainUntilDate"] = until.replace(microsecond=0)
        sse = self.config.server_side_encryption
        if sse:
            args["ServerSideEncryption"] = sse
        if sse == "aws:kms" and self.config.kms_key_id:
            args["SSEKMSKeyId"] = self.config.kms_key_id
        return args

    def _upload(self, name: str, path: Path, sha256: str, metadata: dict[str, str], conditional: bool,
                retain: bool = True) -> bool:
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise ArchiveError(f"Could not read {path}: {exc.strerror or exc}.", "Check the staging folder.") from None
        if size > self.single_put_limit:
            return self._multipart(name, path, size, sha256, metadata, conditional, retain)
        with open(path, "rb") as fh:
            data = fh.read()
        _check_digest(hashlib.sha256(data).hexdigest(), sha256, name)
        args = dict(Bucket=self.bucket, Key=name, Body=data, ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=_b64(bytes.fromhex(sha256)),
                    **self._write_args(metadata, retain))
        return self._create(name, lambda cond: self.client.put_object(**args, **cond), conditional)

    def _multipart(self, name: str, path: Path, size: int, sha256: str, metadata: dict[str, str],
                   conditional: bool, retain: bool) -> bool:
        """Upload part by part, each with its own SHA-256; complete only if the whole file matches."""
        part_size = multipart_part_size(size, self.part_size)
        try:
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=name, ChecksumAlgorithm="SHA256", **self._write_args(metadata, retain))["UploadId"]
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "put", name) from None
        done = False
        try:
            digest, parts = hashlib.sha256(), []
            with open(path, "rb") as fh:
                while chunk := fh.read(part_size):
                    digest.update(chunk)
                    checksum = _b64(hashlib.sha256(chunk).digest())
                    number = len(parts) + 1
                    reply = self.client.upload_part(Bucket=self.bucket, Key=name, UploadId=upload_id,
                                                    PartNumber=number, Body=chunk, ChecksumAlgorithm="SHA256",
                                                    ChecksumSHA256=checksum)
                    parts.append({"PartNumber": number, "ETag": reply["ETag"], "ChecksumSHA256": checksum})
            _check_digest(digest.hexdigest(), sha256, name)
            complete = dict(Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts})
            written = self._create(name, lambda cond: self.client.complete_multipart_upload(**complete, **cond),
                                   conditional)
            done = written
            return written
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "put", name) from None
        finally:
            if not done:  # uploaded parts are billed until aborted
                try:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
                except (ClientError, BotoCoreError):
                    pass

    def _create(self, name: str, send, conditional: bool) -> bool:
        """Send a write with If-None-Match: * (when asked and supported); False if the key exists."""
        for attempt in range(CONFLICT_RETRIES):
            if conditional and not self._conditional and self._exists(name):
                return False  # fallback for stores without conditional writes: not atomic
            try:
                send({"IfNoneMatch": "*"} if conditional and self._conditional else {})
                return True
            except ClientError as exc:
                code = error_code(exc)
                if code == "PreconditionFailed" and conditional:
                    return False
                if code == "ConditionalRequestConflict" and attempt + 1 < CONFLICT_RETRIES:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                if code == "NotImplemented" and conditional and self._conditional:
                    self._conditional = False
                    continue
                raise self._error(exc, "put", name) from None
            except BotoCoreError as exc:
                raise self._error(exc, "put", name) from None
        raise ArchiveError(f"Concurrent writers kept conflicting on s3://{self.bucket}/{name}.", "Run fetch again.")

    def _exists(self, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=name)
            return True
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(exc, "get", name) from None

    def _error(self, exc: Exception, action: str, name: str) -> ArchiveError:
        return s3_error(exc, action, self.bucket, name, self.config.endpoint_url)


def upload_file(config: ArchiveConfig, url: str, path: Path) -> None:
    """Copy ``path`` to the object ``s3://bucket/key`` (replacing it), with the archive's SSE settings."""
    archive, name = _single(config, url)
    try:
        sha256 = sha256_file(Path(path))
    except OSError as exc:
        raise ArchiveError(f"Could not read {path}: {exc.strerror or exc}.", "Check the file.") from None
    archive._upload(name, Path(path), sha256, {}, conditional=False, retain=False)  # a key bundle, not the archive


def download_file(config: ArchiveConfig, url: str, dest: Path) -> None:
    """Copy the object ``s3://bucket/key`` into a new file ``dest`` (0600)."""
    archive, name = _single(config, url)
    archive.get(name, Path(dest))


def _single(config: ArchiveConfig, url: str) -> tuple[S3Archive, str]:
    bucket, key = parse_s3_url(url)
    if not key:
        raise ArchiveError(f"{url!r} names a bucket, not an object.", "Write it as s3://bucket/path/file.")
    validate_key(key)
    return S3Archive(dataclasses.replace(config, url=f"s3://{bucket}")), key


def multipart_part_size(size: int, part_size: int = 16 * MiB) -> int:
    """The part size a multipart upload of ``size`` bytes uses (``verify`` recomputes its checksum)."""
    return max(part_size, -(-size // MAX_PARTS))


def _check_digest(actual: str, expected: str, name: str) -> None:
    if actual != expected.lower():
        raise ArchiveError(f"Refused to archive {name}: its SHA-256 does not match the verified download.",
                           "The staged file changed or was corrupted; run fetch again.")


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")
