"""The settings model: plain dataclasses, filled in by ibreports.configparse."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .secrets import Secret


@dataclass
class SourceConfig:
    """One server login or API: the keys every kind shares, and the kind's own ``settings``.

    ``settings`` is an instance of the kind's settings dataclass (``get_kind(kind).settings``:
    host, port, username, keys...); see ibreports/remote/registry.py.
    """

    name: str
    kind: str  # a registered kind: ibreports.remote.registry.known_kinds()
    settings: Any
    timeout: float = 30.0
    connections: int = 4
    settle_seconds: int = 120
    delete_after_archive: bool = False
    allow_plain: bool = True


# Decompression bombs: plaintext bytes allowed per encrypted byte, at least OUTPUT_FLOOR, at most max_output.
DEFAULT_MAX_EXPANSION = 100.0  # compressed Flex XML expands ~5-30x
DEFAULT_MAX_OUTPUT = 4 << 30
OUTPUT_FLOOR = 64 << 20


@dataclass
class PgpKeyEntry:
    """One ``[pgp] secret_key_file`` entry: a path, or ``{ file = ..., passphrase = ... }``."""

    file: Path
    passphrase: Secret | None = None  # its own; None: [pgp] passphrase applies


@dataclass
class PgpConfig:
    secret_key_files: list[Path] = field(default_factory=list)
    passphrase: Secret | None = None
    key_entries: list[PgpKeyEntry] = field(default_factory=list)  # same order as secret_key_files
    signer_keys: list[Path] = field(default_factory=list)  # public key files; set: a good signature is required
    max_expansion: float = DEFAULT_MAX_EXPANSION
    max_output: int = DEFAULT_MAX_OUTPUT

    def passphrase_for(self, index: int) -> Secret | None:
        """The passphrase that applies to secret key file ``index``: its own, else [pgp] passphrase."""
        own = self.key_entries[index].passphrase if index < len(self.key_entries) else None
        return own or self.passphrase


@dataclass(frozen=True)
class ObjectLock:
    """S3 Object Lock retention applied to every archive write."""

    mode: str  # "COMPLIANCE" | "GOVERNANCE"
    days: int


@dataclass
class ArchiveConfig:
    url: str = "archive"
    endpoint_url: str = ""
    region: str = ""
    server_side_encryption: str = "AES256"
    kms_key_id: str = ""
    keep_encrypted: bool = True
    object_lock: ObjectLock | None = None
    aws_credentials_block: str = ""  # a prefect-aws AwsCredentials block's name: the S3 credentials

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")


@dataclass
class RetentionConfig:
    purge_days: int = 100
    warn_days: int = 14


@dataclass
class AlertsConfig:
    urls: list[Secret] = field(default_factory=list)
    unreachable_days: int = 2


@dataclass
class CoverageConfig:
    grace_days: int = 3
    calendar: str = "NYSE"  # a financial calendar of the holidays package, or "none" (weekdays only)


@dataclass
class RunConfig:
    workers: int = 4
    staging_dir: Path | None = None
    source_deadline_minutes: float = 240.0  # one source's whole run; then its remaining files wait
    reconnect_minutes: float = 5.0  # how long a lost connection is re-established within a run


@dataclass
class Config:
    path: Path | None
    sources: list[SourceConfig] = field(default_factory=list)
    pgp: PgpConfig = field(default_factory=PgpConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    run: RunConfig = field(default_factory=RunConfig)
    coverage: CoverageConfig = field(default_factory=CoverageConfig)

    def source(self, name: str) -> SourceConfig:
        for src in self.sources:
            if src.name == name:
                return src
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(
            f"No source named '{name}' in {self.path}.", f"Use one of: {known}."
        )

    def select(self, names: list[str] | None) -> list[SourceConfig]:
        return [self.source(n) for n in names] if names else list(self.sources)
