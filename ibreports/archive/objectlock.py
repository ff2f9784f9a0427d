"""S3 Object Lock: what the bucket enforces, checked against ``[archive] object_lock`` before anything is written."""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import ConfigError
from .s3client import error_code

DAYS_PER_YEAR = 365


@dataclass(frozen=True)
class LockState:
    """The bucket's Object Lock settings."""

    enabled: bool
    versioning: bool
    default_mode: str = ""  # "" without a default retention rule
    default_days: int = 0

    def describe(self) -> str:
        if not self.enabled:
            return f"Object Lock not enabled; versioning {'on' if self.versioning else 'off'}"
        default = f"{self.default_mode} {self.default_days} days" if self.default_mode else "none"
        return f"Object Lock enabled, versioning {'on' if self.versioning else 'off'}, default retention {default}"


def lock_state(archive) -> LockState:
    """Read the bucket's Object Lock configuration and versioning (two requests)."""
    client, bucket = archive.client, archive.bucket
    try:
        versioning = client.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"
        try:
            conf = client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
        except ClientError as exc:
            if error_code(exc) != "ObjectLockConfigurationNotFoundError":
                raise
            return LockState(False, versioning)
    except (ClientError, BotoCoreError) as exc:
        raise archive._error(exc, "read the Object Lock settings of", "") from None
    retention = conf.get("Rule", {}).get("DefaultRetention", {})
    days = int(retention.get("Days") or 0) or int(retention.get("Years") or 0) * DAYS_PER_YEAR
    return LockState(conf.get("ObjectLockEnabled") == "Enabled", versioning, retention.get("Mode", ""), days)


def check_lock(archive) -> tuple[LockState, str]:
    """The bucket's lock settings and a line describing them; ConfigError when they do not carry
    ``[archive] object_lock`` (lock or versioning off, or a stricter default retention)."""
    state = lock_state(archive)
    lock = archive.config.object_lock
    where = f"bucket {archive.bucket}"
    if lock is None:
        return state, state.describe() + "; [archive] object_lock not set: ibreports adds no retention of its own"
    if not state.enabled:
        raise ConfigError(
            f"archive.object_lock is set but {where} does not have Object Lock enabled.",
            f"Enable it (aws s3api put-object-lock-configuration --bucket {archive.bucket} "
            "--object-lock-configuration ObjectLockEnabled=Enabled, with versioning on), or remove object_lock.",
        )
    if not state.versioning:
        raise ConfigError(f"archive.object_lock is set but versioning is off on {where}.",
                          f"Turn versioning on: aws s3api put-bucket-versioning --bucket {archive.bucket} "
                          "--versioning-configuration Status=Enabled.")
    weaker = (state.default_mode == "COMPLIANCE" and lock.mode == "GOVERNANCE") or lock.days < state.default_days
    if weaker:
        raise ConfigError(
            f"archive.object_lock ({lock.mode}, {lock.days} days) is weaker than the default retention of {where} "
            f"({state.default_mode}, {state.default_days} days), and ibreports' own retention would replace it.",
            "Set [archive] object_lock to at least the bucket's default mode and days.",
        )
    return state, f"{state.describe()}; every object is written with {lock.mode} retention for {lock.days} days"
