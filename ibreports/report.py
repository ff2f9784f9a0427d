"""Run results as plain data: per-file outcomes, the run report, the JSON run record."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

from .errors import ConfigError, IbreportsError, error_class


class Outcome(StrEnum):
    """What happened to one file (a str: compares equal to its value, JSON-serialises as it)."""

    ARCHIVED = "archived"
    ALREADY_ARCHIVED = "already-archived"
    VERIFIED = "verified"  # --force compared it, rewrote nothing
    PLANNED = "planned"
    WAITING = "waiting"
    FAILED = "failed"
    REJECTED = "rejected"
    # Outside --since/--until, not archived and close to the purge: not acted on, but the
    # run's at-risk check must see it, as `status` would. Other files outside the range are left out.
    OUT_OF_RANGE = "out-of-range"


class Reason(StrEnum):
    """Why a file got its outcome, as a stable code (``FileOutcome.code``) beside the sentence."""

    NONE = ""
    SETTLING = "settling"  # modified too recently: fetched once it is settle_seconds old
    CHANGED = "changed"  # changed during the download: next run
    BAD_NAME = "bad-name"  # a name we refuse to use
    BAD_ENTRY = "bad-entry"  # a listing entry that cannot be true (negative size, ...)
    BAD_DATE = "bad-date"  # a name dated outside 1990..today + 1 year: never archived under that date
    MISMATCH = "mismatch"  # the statement's content names another account or period than its file name
    SHADOW = "shadow"  # a plain delivery of a statement that also comes (or came) encrypted
    PLAIN_REFUSED = "plain-refused"  # a plain delivery from a source with allow_plain = false
    CONFLICT = "conflict"  # different content for an archived statement: kept aside, never replaced
    NOT_PGP = "not-pgp"  # named as encrypted but not OpenPGP
    DECRYPTION = "decryption"
    ARCHIVE = "archive"  # the archive refused this file, or the whole run (then not attempted)
    CONNECTION = "connection"
    IO = "io"  # a local I/O error other than a full disk
    DISK_FULL = "disk-full"  # staging, gpg's output or the archive ran out of space: named, nothing lost
    DEADLINE = "deadline"  # the source's deadline ran out before this file
    RACE = "race"  # archived meanwhile by another run
    OUT_OF_RANGE = "out-of-range"
    ERROR = "error"  # anything else (a bug): the message says what


DONE = (Outcome.ARCHIVED, Outcome.ALREADY_ARCHIVED, Outcome.VERIFIED)
FAILED = (Outcome.FAILED, Outcome.REJECTED)
OUT_OF_RANGE = Outcome.OUT_OF_RANGE
# ``extra`` of a log record whose text the run report holds too (a file's reason, a source's error, a
# note, the summary): `ibreports fetch` prints the report, so its console leaves these records out.
IN_REPORT = {"in_report": True}


@dataclass
class FileOutcome:
    """What happened to one remote file. Plain data only: safe for logs, reports, Prefect."""

    source: str
    name: str
    size: int
    mtime: float
    account: str | None
    statement_date: str  # ISO date
    outcome: Outcome | str  # an Outcome; a plain str once read back from a run record
    reason: str = ""  # one sentence for people
    sha256: str = ""
    archive_keys: list[str] = field(default_factory=list)
    days_left: int = 0
    code: Reason | str = Reason.NONE  # the reason as a stable code (e.g. "shadow", "conflict")
    deleted_from_server: bool = False  # delete_after_archive removed it after verifying the archive
    signature: str = ""  # PGP deliveries: "unsigned" or "<signing key ID> verified|unverified"


@dataclass
class RunReport:
    """The whole run; also written as a JSON run record under ``runs/`` in the archive."""

    run_id: str
    started: str
    finished: str = ""
    dry_run: bool = False
    force: bool = False
    sources: list[str] = field(default_factory=list)
    files: list[FileOutcome] = field(default_factory=list)
    source_errors: dict[str, str] = field(default_factory=dict)  # source -> one-line cause and remedy
    source_error_types: dict[str, str] = field(default_factory=dict)  # source -> exception class name
    warn_days: int = 14
    record_key: str = ""
    already_archived: int = 0  # in run records, which list only the files a run acted on
    notes: list[str] = field(default_factory=list)  # run-level warnings worth repeating (plain FTP, ...)
    origin: dict[str, str] = field(default_factory=dict)  # who ran it: e.g. the Prefect flow run's id and URL
    # The ledger: archive key -> SHA-256 of every object this run wrote (or compared and found equal).
    written: dict[str, str] = field(default_factory=dict)
    open_conflicts: list[str] = field(default_factory=list)  # ids of conflicts open after the run (exit 1)

    def count(self, outcome: str) -> int:
        return sum(1 for f in self.files if f.outcome == outcome)

    @property
    def failed(self) -> list[FileOutcome]:
        return [f for f in self.files if f.outcome in FAILED]

    @property
    def at_risk(self) -> list[FileOutcome]:
        """Files not archived that the server purges within ``warn_days``."""
        return [f for f in self.files if f.outcome not in DONE and f.days_left <= self.warn_days]

    @property
    def acted_on(self) -> list[FileOutcome]:
        """The files of the run's range (out-of-range rows only feed the at-risk check)."""
        return [f for f in self.files if f.outcome != OUT_OF_RANGE]

    @property
    def misconfigured(self) -> list[str]:
        """Sources that failed on their configuration (missing key file, unset secret, ...)."""
        return [s for s in self.source_errors if _is_config_error(self.source_error_types.get(s, ""))]

    @property
    def exit_code(self) -> int:
        """INTERFACE.md: 3 when a source was unreachable (or refused us), 2 when every failing
        source was misconfigured, 1 when files failed or are at risk, else 0."""
        if self.source_errors:
            return max(_source_exit_code(self.source_error_types.get(s, "")) for s in self.source_errors)
        return 1 if self.failed or self.at_risk or self.open_conflicts else 0

    @property
    def bytes_archived(self) -> int:
        return sum(f.size for f in self.files if f.outcome == "archived")

    def summary_line(self) -> str:
        parts = [
            f"{self.count('archived')} archived",
            f"{self.count('already-archived')} already archived",
        ]
        for label in ("verified", "planned", "waiting", "failed", "rejected"):
            if self.count(label):
                parts.append(f"{self.count(label)} {label}")
        deleted = sum(f.deleted_from_server for f in self.files)
        if deleted:
            parts.append(f"{deleted} deleted from the server")
        if self.at_risk:
            parts.append(f"{len(self.at_risk)} at risk of purge")
        if self.open_conflicts:
            parts.append(f"{len(self.open_conflicts)} open conflict(s) (ibreports conflicts list)")
        # Each error class names its own kind of failure: "misconfigured", "unreachable",
        # "login refused", "certificate refused", ... (errors.py, ``summary``).
        labels: dict[str, int] = {}
        for source in self.source_errors:
            label = _summary(self.source_error_types.get(source, ""))
            labels[label] = labels.get(label, 0) + 1
        for label in sorted(labels, key=lambda x: (x != "misconfigured", x != "unreachable", x)):
            parts.append(f"{labels[label]} source(s) {label}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_record(self) -> bytes:
        """The JSON run record: every file the run acted on, and a count of those already archived.

        A daily run over 10,000 archived files would otherwise repeat 10,000 rows every day;
        the run that archived a file has its full row.
        """
        acted = [f for f in self.files if f.outcome != "already-archived" or f.deleted_from_server]
        data = asdict(replace(self, files=acted, already_archived=len(self.files) - len(acted)))
        return json.dumps(data, indent=1, sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: dict) -> "RunReport":
        files = [FileOutcome(**f) for f in data.get("files", [])]
        return cls(**{**data, "files": files})


def _summary(kind: str) -> str:
    """How the summary names a source failed with the error class ``kind`` ("login refused", ...)."""
    cls = error_class(kind)
    return cls.summary if cls is not None else "failed unexpectedly"  # not one of ours: a bug


def _source_exit_code(kind: str) -> int:
    """The exit code of a source failed with the error class ``kind``; an exception that is not one
    of ours (a bug, recorded by its type name) fails the run like a failed file (1)."""
    cls = error_class(kind)
    return cls.source_exit_code if cls is not None else 1


def _is_config_error(kind: str) -> bool:
    cls = error_class(kind)
    return cls is not None and issubclass(cls, ConfigError)


def table_rows(report: RunReport) -> list[dict[str, str]]:
    """One row per file (for the CLI table and the Prefect artifact)."""
    return [
        {
            "source": f.source,
            "file": f.name,
            "account": f.account or "",
            "statement date": f.statement_date,
            "size": str(f.size),
            "days left": str(f.days_left),
            "outcome": f.outcome,
            "code": f.code,
            "reason": f.reason,
            "archive keys": " ".join(f.archive_keys),
            "deleted from server": "yes" if f.deleted_from_server else "",
            "signature": f.signature,
        }
        for f in report.files
    ]
