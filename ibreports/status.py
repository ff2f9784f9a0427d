"""Status: every remote file against the archive, with the days left before the purge.

The archive is listed once; each source is listed once. A file counts as archived
exactly when the pipeline would skip it (same keys, same rule).

JSON schema (``ibreports status --json``), stable::

    {"generated": "2026-11-22T06:30:00+00:00", "purge_days": 100, "warn_days": 14,
     "files": [{"source": str, "name": str, "account": str | null,
                "statement_date": "YYYY-MM-DD", "age_days": int, "days_left": int,
                "archived": bool, "at_risk": bool,
                "last_outcome": str | null, "last_reason": str | null}],
     "errors": {source: "cause and remedy"},
     "conflicts": [{"id": str, "source": str, "remote_name": str, "key": str, ...}]}

``conflicts`` lists the open conflicts (as ``ibreports conflicts list --json`` does): while one is
open, status exits 1. ``files`` is sorted by days left (soonest purge first), then source and name.
``last_outcome``/``last_reason``: for a file not archived, what the latest run record that
covered its source says happened to it (``failed``, ``rejected``, ``waiting``), else null.
Sources without a file listing (the Flex Web Service) make statements when asked: nothing
of theirs waits on a server to be purged, so they add no rows (the table names them).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from . import statements
from .archive import Archive, open_archive
from .conflicts import list_conflicts, open_deliveries, resolved_deliveries
from .config import Config, SourceConfig
from .errors import IbreportsError
from .remote import RemoteFile, open_remote
from .remote.registry import kind_of


@dataclass
class StatusRow:
    """One remote file. Plain data: safe to print, log or send."""

    source: str
    name: str
    account: str | None
    statement_date: str  # ISO date
    age_days: int
    days_left: int
    archived: bool
    at_risk: bool
    last_outcome: str | None = None  # not archived: what the latest run covering its source did with it
    last_reason: str | None = None

log = logging.getLogger(__name__)
UNFINISHED = ("failed", "rejected", "waiting")
MAX_RECORDS = 30  # run records read, newest first, to cover every source


@dataclass
class StatusReport:
    generated: str
    purge_days: int
    warn_days: int
    files: list[StatusRow] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # source -> one-line cause and remedy
    error_codes: dict[str, int] = field(default_factory=dict)  # source -> exit code of its error
    on_demand: list[str] = field(default_factory=list)  # sources without a listing: nothing to purge
    conflicts: list[dict] = field(default_factory=list)  # open conflicts (ibreports conflicts list)

    @property
    def at_risk(self) -> list[StatusRow]:
        return [r for r in self.files if r.at_risk]

    @property
    def exit_code(self) -> int:
        """3 when a source could not be reached (2 for a configuration problem), 1 at risk or an open
        conflict, else 0."""
        if self.errors:
            return max(self.error_codes.values(), default=3)
        return 1 if self.at_risk or self.conflicts else 0

    def to_dict(self) -> dict:
        """The documented JSON schema (module docstring)."""
        return {
            "generated": self.generated,
            "purge_days": self.purge_days,
            "warn_days": self.warn_days,
            "files": [asdict(r) for r in self.files],
            "errors": dict(self.errors),
            "conflicts": list(self.conflicts),
        }


def collect_status(config: Config, sources: list[str] | None = None, now: float | None = None) -> StatusReport:
    """List every selected source against one archive inventory."""
    now = time.time() if now is None else now
    ret = config.retention
    report = StatusReport(
        generated=datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
        purge_days=ret.purge_days,
        warn_days=ret.warn_days,
    )
    selected = config.select(sources)
    archive = open_archive(config.archive)
    inventory = archive.inventory()
    last = last_outcomes(archive, inventory, [s.name for s in selected])
    report.conflicts = [c.to_dict() for c in list_conflicts(archive, inventory)]
    resolved = resolved_deliveries(inventory)
    contested = open_deliveries(inventory)
    for source in selected:
        if not kind_of(source).capabilities.listing:
            report.on_demand.append(source.name)
            continue
        try:
            listing = _list(source)
        except IbreportsError as exc:
            report.errors[source.name] = str(exc)
            report.error_codes[source.name] = exc.source_exit_code
            continue
        except Exception as exc:  # noqa: BLE001 - one source's bug must not hide the others' files
            log.debug("%s: listing failed", source.name, exc_info=True)
            report.errors[source.name] = f"unexpected {type(exc).__name__} while listing (run with --debug for the traceback)."
            report.error_codes[source.name] = 1  # as fetch counts it: a failure of ours, not an unreachable server
            continue
        for rf in listing:
            row = _row(config, source.name, rf, inventory, now, resolved, contested)
            if not row.archived and (source.name, rf.name) in last:
                row.last_outcome, row.last_reason = last[(source.name, rf.name)]
            report.files.append(row)
    report.files.sort(key=lambda r: (r.days_left, r.source, r.name))
    return report


def last_outcomes(archive: Archive, inventory: dict, sources: list[str]) -> dict[tuple[str, str], tuple[str, str]]:
    """(source, file name) -> (outcome, reason) for files the latest run of each source left unfinished."""
    return {k: (f["outcome"], str(f.get("reason") or "")) for k, f in last_unfinished(archive, inventory, sources).items()}


def last_unfinished(archive: Archive, inventory: dict, sources: list[str]) -> dict[tuple[str, str], dict]:
    """(source, file name) -> the run record's row for files the latest run of each source left unfinished.

    Run records are read newest first (their names start with a UTC timestamp) until every
    source was covered by one (dry runs do not count), at most MAX_RECORDS of them.
    """
    keys = sorted((k for k in inventory if k.startswith("runs/") and k.endswith(".json")),
                  key=lambda k: PurePosixPath(k).name, reverse=True)
    todo, found = set(sources), {}
    with tempfile.TemporaryDirectory(prefix="ibreports-runs-") as tmp:
        for i, key in enumerate(keys[:MAX_RECORDS]):
            if not todo:
                break
            record = _read(archive, key, Path(tmp) / f"{i}.json")
            if not record or record.get("dry_run"):
                continue
            covered = todo & set(record.get("sources") or [])
            for f in record.get("files") or []:
                if isinstance(f, dict) and f.get("source") in covered and f.get("outcome") in UNFINISHED:
                    found[(f["source"], f.get("name"))] = f
            todo -= covered
    return found


def _read(archive: Archive, key: str, dest: Path) -> dict | None:
    try:
        archive.get(key, dest)
        record = json.loads(dest.read_bytes())
        return record if isinstance(record, dict) else None
    except (IbreportsError, OSError, ValueError) as exc:
        log.warning("run record %s unreadable (%s); skipped", key, type(exc).__name__)
        return None


def _list(source: SourceConfig) -> list[RemoteFile]:
    with open_remote(source) as remote:
        return remote.list()


def _row(config: Config, source: str, rf: RemoteFile, inventory: dict, now: float,
         resolved: dict | None = None, contested: set | None = None) -> StatusRow:
    days_left = statements.days_left(rf.mtime, config.retention.purge_days, now)
    st = statements.parse(rf.name, rf.mtime) if rf.name and rf.name.isprintable() else None
    try:
        statements.check_name(rf.name)  # also rules out every name that is not printable
    except IbreportsError:
        archived = False  # a hostile name is never downloaded: at risk like any other file
    else:
        archived = st is not None and all(k in inventory for k in statements.needed_keys(source, st, config.archive.keep_encrypted))
        # A delivery whose conflict a person resolved is settled (the same bytes, kept in conflicts/).
        archived = archived or (resolved or {}).get((source, rf.name)) == rf.size
        archived = archived and (source, rf.name) not in (contested or set())  # an open conflict: not yet
    when = st.statement_date if st else datetime.fromtimestamp(rf.mtime, timezone.utc).date()
    return StatusRow(
        source=source,
        name=rf.name,
        account=st.account if st else None,
        statement_date=when.isoformat(),
        age_days=statements.age_days(rf.mtime, now),
        days_left=days_left,
        archived=archived,
        at_risk=not archived and days_left <= config.retention.warn_days,
    )


def format_table(report: StatusReport) -> str:
    """Human table, soonest purge first; at-risk rows marked with '!'."""
    lines = [f"  {'left':>5} {'age':>4} {'archived':<8} {'account':<10} {'date':<10}  source/file"]
    for r in report.files:
        mark = "!" if r.at_risk else " "
        name = r.name if r.name.isprintable() else repr(r.name)
        lines.append(
            f"{mark} {r.days_left:>5} {r.age_days:>4} {'yes' if r.archived else 'NO':<8} "
            f"{(r.account or '-'):<10} {r.statement_date:<10}  {r.source}/{name[:120]}"
        )
        if r.last_outcome:
            lines.append(f"{'':>21}last run: {r.last_outcome}: {r.last_reason or 'no reason recorded'}")  # whole: the remedy ends it
    if not report.files:
        lines.append("  (no files on the server)")
    for source in report.on_demand:
        lines.append(f"source {source}: on demand (statements are made when fetched; none wait on a server)")
    for source, message in sorted(report.errors.items()):
        lines.append(f"source {source}: {message}")
    risky = report.at_risk
    if risky:
        lines.append(
            f"! {len(risky)} file(s) not archived within {report.warn_days} day(s) of the purge: "
            "run `ibreports fetch` now."
        )
    for c in report.conflicts:
        lines.append(f"! CONFLICT {c['id']}: {c.get('source')}/{c.get('remote_name')} contradicts {c.get('key')} "
                     "(open: `ibreports conflicts list`, then `ibreports conflicts resolve`)")
    archived = sum(r.archived for r in report.files)
    lines.append(f"{len(report.files)} file(s) on the server, {archived} archived, {len(risky)} at risk.")
    return "\n".join(lines)
