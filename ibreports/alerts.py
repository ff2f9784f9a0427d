"""Alerts through apprise: one message per cause, never a secret.

Causes: a run with failed files (or a source refusing our key or host key), files
at risk of the purge, and a source unreachable for more than
``[alerts] unreachable_days``. "For how long" comes from the run records in the
archive (``runs/``), the only state there is: the source has been down since the
first failing run after its last successful one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath, Path
from typing import Iterable

from . import errors
from .archive import Archive, open_archive
from .config import Config, Secret
from .errors import ConfigError, IbreportsError
from .report import RunReport

log = logging.getLogger("ibreports.alerts")
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


class _RedactUrls(logging.Filter):
    """apprise names target URLs (which hold tokens) in some records, e.g. 'Unparseable URL ...'."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = URL.sub("<alert target>", record.getMessage()), None
        return True


_apprise_log = logging.getLogger("apprise")
_apprise_log.setLevel(logging.WARNING)  # its DEBUG records hold whole URLs and payloads, even with --debug
_apprise_log.addFilter(_RedactUrls())

MAX_LINES = 25
DAY = 86400


@dataclass(frozen=True)
class Alert:
    cause: str  # "failed" | "at-risk" | "unreachable" | "coverage"
    title: str
    body: str


def send_alerts(config: Config, report: RunReport | None = None, status_rows: Iterable | None = None,
                extra: Iterable[Alert] = (), skip: Iterable[str] = ()) -> int:
    """Send one message per cause to every ``[alerts] urls`` target; returns messages delivered.

    ``skip``: causes someone else tells (the flows: the Prefect server tells a failed run).

    Never raises for a delivery problem: alerting must not turn a run into a failure.
    """
    if not config.alerts.urls:
        return 0
    import apprise  # lazy: only runs that alert pay for the import

    targets = apprise.Apprise()
    for index, url in enumerate(config.alerts.urls):
        try:
            ok = targets.add(url.get())
        except ConfigError as exc:
            log.warning("alert target alerts.urls[%d] skipped: %s", index, exc.message)
            continue
        if not ok:
            log.warning("alert target alerts.urls[%d] is not a URL apprise understands; skipped", index)
    if not len(targets):
        return 0
    secrets = _known_secrets(config)
    sent = 0
    skipped = set(skip)
    for alert in [a for a in [*build_alerts(config, report, status_rows), *extra] if a.cause not in skipped]:
        kind = apprise.NotifyType.FAILURE if alert.cause != "at-risk" else apprise.NotifyType.WARNING
        if targets.notify(title=_scrub(alert.title, secrets), body=_scrub(alert.body, secrets), notify_type=kind):
            sent += 1
        else:
            log.warning("the '%s' alert could not be delivered to every target", alert.cause)
    return sent


def build_alerts(config: Config, report: RunReport | None = None, status_rows: Iterable | None = None,
                 archive: Archive | None = None, now: float | None = None) -> list[Alert]:
    """The messages to send for this run and/or status, one per cause (pure but for run records)."""
    now = time.time() if now is None else now
    alerts: list[Alert] = []
    if report is not None:
        failed = _failed(report)
        if failed:
            alerts.append(failed)
    risky = _at_risk(report, status_rows, config.retention.warn_days)
    if risky:
        alerts.append(risky)
    if report is not None:
        down = [s for s, kind in report.source_error_types.items() if _transient(kind)]
        if down:
            try:
                alert = _unreachable(config, report, down, archive or open_archive(config.archive), now)
            except IbreportsError as exc:  # no run records, no duration: say so, keep the other alerts
                log.warning("could not read run records to time the outage: %s", exc.message)
                alert = None
            if alert:
                alerts.append(alert)
    link = report.origin.get("prefect_flow_run_url") if report is not None else None
    if link:  # the alert leads to the run that sent it
        alerts = [Alert(a.cause, a.title, f"{a.body}\n\nFlow run: {link}") for a in alerts]
    return alerts


def _transient(kind: str) -> bool:
    cls = errors.error_class(kind)
    return cls is not None and cls.retryable


def _failed(report: RunReport) -> Alert | None:
    lines = [f"{f.source}/{_safe(f.name)}: {f.outcome}: {f.reason}" for f in report.failed]
    lines += [
        f"source {source}: {report.source_errors[source]}"
        for source, kind in sorted(report.source_error_types.items()) if not _transient(kind)
    ]
    if not lines:
        return None
    title = f"ibreports: run {report.run_id} failed ({len(lines)} problem(s))"
    return Alert("failed", title, _body(lines, f"Run {report.run_id}: {report.summary_line()}."))


def _at_risk(report: RunReport | None, rows: Iterable | None, warn_days: int) -> Alert | None:
    if rows is not None:
        risky = [(r.days_left, r.source, r.name) for r in rows if r.at_risk]
    else:
        risky = [(f.days_left, f.source, f.name) for f in report.at_risk] if report else []
    if not risky:
        return None
    risky.sort()
    lines = [f"{source}/{_safe(name)}: {left} day(s) left" for left, source, name in risky]
    head = (f"Not archived and close to the server's purge (within {warn_days} days). "
            "Run `ibreports fetch` now, or fix what keeps them from being archived.")
    return Alert("at-risk", f"ibreports: {len(risky)} file(s) at risk of the purge", _body(lines, head))


def _unreachable(config: Config, report: RunReport, sources: list[str], archive: Archive, now: float) -> Alert | None:
    limit = config.alerts.unreachable_days
    lines = []
    for source in sorted(sources):
        since = down_since(archive, source, report)
        if since is None or now - since < limit * DAY:
            continue
        when = datetime.fromtimestamp(since, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        lines.append(
            f"source {source}: unreachable since {when} ({int((now - since) // DAY)} day(s)); "
            f"last error: {report.source_errors[source]}"
        )
    if not lines:
        return None
    head = f"No successful contact for more than {limit} day(s); files are purged after {config.retention.purge_days} days."
    return Alert("unreachable", f"ibreports: {len(lines)} source(s) unreachable", _body(lines, head))


def down_since(archive: Archive, source: str, current: RunReport | None = None) -> float | None:
    """Start time of the first failing run after the source's last success (None: not failing).

    Reads run records newest first and stops at the first success, so the cost is
    the failing streak, not the whole history.
    """
    runs = [k for k in archive.inventory("runs/") if k.endswith(".json")]  # only the run records
    runs.sort(key=lambda k: PurePosixPath(k).name, reverse=True)  # names start with a UTC timestamp
    since: float | None = None
    if current is not None and source in current.source_errors:
        since = _timestamp(current.started)
    with tempfile.TemporaryDirectory(prefix="ibreports-runs-") as tmp:
        for i, key in enumerate(runs):
            record = _read_record(archive, key, Path(tmp) / f"{i}.json")
            if record is None or record.dry_run or source not in record.sources:
                continue
            if current is not None and record.run_id == current.run_id:
                continue
            if source not in record.source_errors:
                return since
            since = _timestamp(record.started)
    return since


def _read_record(archive: Archive, key: str, dest: Path) -> RunReport | None:
    try:
        archive.get(key, dest)
        return RunReport.from_dict(json.loads(dest.read_bytes()))
    except (IbreportsError, OSError, ValueError, TypeError) as exc:
        log.warning("run record %s unreadable (%s); skipped", key, type(exc).__name__)
        return None


def _timestamp(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def _body(lines: list[str], head: str) -> str:
    shown = lines[:MAX_LINES]
    more = [f"... and {len(lines) - MAX_LINES} more"] if len(lines) > MAX_LINES else []
    return "\n".join([head, ""] + [f"- {line}" for line in shown] + more)


def _safe(name: str) -> str:
    return (name if name.isprintable() else repr(name))[:120]


def _known_secrets(config: Config) -> list[str]:
    """Secret values to blank out of any message: defence in depth behind secret-free errors."""
    found: list[Secret | None] = [config.pgp.passphrase, *(e.passphrase for e in config.pgp.key_entries),
                                  *config.alerts.urls]
    for source in config.sources:
        settings = source.settings
        found += [v for v in (getattr(settings, f.name) for f in dataclasses.fields(settings)) if isinstance(v, Secret)]
    values = []
    for secret in found:
        if secret is None or secret.reference.startswith("prefect:"):
            continue  # a Prefect block is not loaded just to scrub a message
        try:
            value = secret.get()
        except ConfigError:
            continue
        if len(value) >= 4:
            values.append(value)
    return values


def _scrub(text: str, secrets: list[str]) -> str:
    for value in secrets:
        text = text.replace(value, "********")
    return text
