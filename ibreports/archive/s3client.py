"""The single seam where boto3 S3 clients are made, and S3 failures become clear errors."""

from __future__ import annotations

import threading
from urllib.parse import quote

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    FlexibleChecksumError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)

from ..config import ArchiveConfig
from ..errors import ArchiveConfigError, ArchiveError, ArchiveUnreachable
from .awsblock import block_credentials

_CLIENT_LOCK = threading.Lock()
_LOADER = None


def make_s3_client(config: ArchiveConfig, *, max_attempts: int = 8, connect_timeout: float = 10,
                   read_timeout: float = 60):
    """The one place a boto3 S3 client is made (archive and key backup share it)."""
    global _LOADER
    session_kwargs, region, endpoint = {}, config.region, config.endpoint_url
    if config.aws_credentials_block:  # the block's keys; the archive's own region and endpoint win
        block = block_credentials(config.aws_credentials_block)
        session_kwargs, region, endpoint = block.session, region or block.region, endpoint or block.endpoint_url
    boto_config = BotoConfig(
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        tcp_keepalive=True,
        max_pool_connections=16,
        # Custom endpoints (MinIO, Ceph, moto) rarely have wildcard DNS for virtual hosts.
        s3={"addressing_style": "path"} if endpoint else None,
    )
    kwargs = {"config": boto_config}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if region:
        kwargs["region_name"] = region
    with _CLIENT_LOCK:
        # A private session per client (boto3 sessions are not thread-safe), sharing one model
        # loader: parsing the S3 service model again costs ~0.1 s per client.
        botocore_session = botocore.session.get_session()
        if _LOADER is None:
            _LOADER = botocore_session.get_component("data_loader")
        botocore_session.register_component("data_loader", _LOADER)
        return boto3.session.Session(botocore_session=botocore_session, **session_kwargs).client("s3", **kwargs)


PERMISSIONS = {"list": "s3:ListBucket", "put": "s3:PutObject", "get": "s3:GetObject", "delete": "s3:DeleteObject",
               "read the Object Lock settings of": "s3:GetBucketObjectLockConfiguration and s3:GetBucketVersioning"}


def s3_error(exc: Exception, action: str, bucket: str, name: str, endpoint: str = "") -> ArchiveError:
    """A boto3/botocore failure as one sentence and a remedy, without credentials.

    The class says the cause: ArchiveConfigError (exit 2) when no write can succeed as configured
    (no bucket, no credentials, access refused), ArchiveUnreachable (exit 3) when the endpoint
    cannot be reached, ArchiveError (this object only) otherwise.
    """
    where = f"s3://{bucket}/{name}"
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError, ProfileNotFound)):
        return ArchiveConfigError(f"No usable AWS credentials were found to {action} {where} ({type(exc).__name__}).",
                            "Set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run on a host with an instance role.")
    if isinstance(exc, FlexibleChecksumError):
        return ArchiveError(f"{where} does not match the SHA-256 checksum the store holds for it.",
                            "The stored object or the transfer is corrupt; compare it with the original before trusting it.")
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):  # refused, DNS, timeouts, after retries
        target = endpoint or "AWS S3"
        return ArchiveUnreachable(f"Could not reach the S3 endpoint {target} to {action} {where} ({type(exc).__name__}).",
                            "Check archive.endpoint_url, archive.region and the network path to the store.")
    if isinstance(exc, BotoCoreError):
        return ArchiveConfigError(f"Could not {action} {where} ({type(exc).__name__}).", "Check the archive settings.")
    code = error_code(exc)
    if code == "NoSuchBucket":
        return ArchiveConfigError(f"Bucket {bucket} does not exist.", "Create it, or fix archive.url.")
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        need = PERMISSIONS.get(action, "s3:*")
        extra = " and kms:GenerateDataKey/kms:Decrypt on the KMS key" if action in ("put", "get") else ""
        return ArchiveConfigError(f"Access denied to {action} {where}.",
                            f"Grant {need}{extra} on arn:aws:s3:::{bucket}/* (s3:ListBucket on the bucket) to these credentials.")
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
        return ArchiveConfigError(f"The S3 store rejected the credentials ({code}).",
                                  "Check the AWS credentials in use for the archive.")
    if code in ("NoSuchKey", "404", "NotFound"):
        return ArchiveError(f"{where} is not in the archive.", "Check the key, or run fetch.")
    if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum"):
        return ArchiveError(f"The S3 store refused {where}: the upload did not match its SHA-256.",
                            "The staged file changed or was corrupted in transit; run fetch again.")
    if code == "NotImplemented":
        return ArchiveConfigError(f"The S3 store does not support a feature needed to {action} {where}.",
                            "If it cannot encrypt, set archive.server_side_encryption = \"none\"; else upgrade the store.")
    if code in ("ServiceUnavailable", "SlowDown", "InternalError", "503", "500", "502", "504", "RequestTimeout"):
        return ArchiveUnreachable(f"The S3 store could not {action} {where} just now ({code}).",
                                  "Retried for a while; if it persists, check the store's status.")
    return ArchiveError(f"The S3 store refused to {action} {where} ({code}).", "See the store's documentation for this error.")


def encode_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """S3 metadata travels as HTTP headers: ASCII only. Other values become ``utf-8''<percent-encoded>``."""
    out = {}
    for key, value in metadata.items():
        name = key.lower()
        if not name or not all(c.isascii() and (c.isalnum() or c in "-_") for c in name):
            raise ArchiveError(f"Metadata name {key!r} is not a valid S3 metadata name.", "This is a bug; report it.")
        text = str(value)
        out[name] = text if text.isascii() and text.isprintable() else "utf-8''" + quote(text, safe="")
    return out


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
