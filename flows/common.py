"""Shared flow pieces: the per-source task, its retry rule, and the run's artifacts.

A task is one source's whole run (one ``pipeline.fetch`` over one source, with the
library's own bounded parallelism inside). Per-file tasks would cost a few ms of
client time plus server-side event recording each, which adds up over thousands
of statements and buys nothing: the archive already makes a re-run resume.
"""

from __future__ import annotations

import contextlib
from datetime import date, datetime, timezone
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError  # re-exported there
from prefect.concurrency.sync import concurrency
from prefect.context import get_run_context
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, Failed, State
from prefect.tasks import exponential_backoff

from ibreports import errors
from ibreports.alerts import send_alerts
from ibreports.config import Config, SourceConfig, config_path, load_config
from ibreports.errors import IbreportsError, is_transient
from ibreports.pipeline import fetch
from ibreports.remote.registry import kind_of
from ibreports.report import RunReport, table_rows

from flows.runs import run_failed, server_tells_failures

RUN_ARTIFACT_KEY = "ibreports-run"
SUMMARY_ARTIFACT_KEY = "ibreports-summary"
MAX_PARALLEL_SOURCES = 4
SLOT_TIMEOUT = 3600.0  # seconds a source run waits for its server's slots before it fails


class ServerBusy(Exception):
    """No slot of the server's concurrency limit became free in time (never retried)."""


def resolve_config(config: str | None) -> str:
    """Absolute config path (argument, else IBREPORTS_CONFIG, else ./ibreports.toml).

    Resolved once, at the start of the flow, so nothing later depends on the cwd.
    """
    return str(config_path(config or None))


def server_limit_name(source: SourceConfig) -> str:
    """Global concurrency limit shared by every run that talks to one IBKR server (the kind names it)."""
    return kind_of(source).slots(source)[0]


def server_slots(cfg: Config, source: SourceConfig) -> int:
    """Connections one run of ``source`` can hold open at once, i.e. the slots it occupies.

    The kind lists one slot per connection it may hold (sFTP: one login multiplexing its channels;
    FTP: one logged-in connection per parallel download, up to ``connections``); a run never holds
    more than ``[run] workers``.
    """
    return max(1, min(cfg.run.workers, len(kind_of(source).slots(source))))


def _fit_to_limit(source: SourceConfig, slots: int) -> int | None:
    """Slots to occupy, None without a limit of the server's name. A run opens no more
    connections than the limit holds at all (Prefect refuses to occupy more)."""
    try:
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(server_limit_name(source))
    except ObjectNotFound:
        return None
    if limit.active and 0 < limit.limit < slots:
        source.connections = limit.limit  # the pipeline opens at most this many
        return limit.limit
    return slots


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only broken or timed-out connections, never refused keys or credentials."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - an unreadable state is not worth a retry
        return False
    return isinstance(exc, BaseException) and is_transient(exc)


def _source_error(report: RunReport, source: str) -> IbreportsError:
    """Rebuild the source-level error the pipeline recorded, keeping its class: a connection lost past
    [run] reconnect_minutes stays a (retryable) ConnectionFailure, so Prefect's retry runs the source
    again; an unexpected exception (a bug) becomes a plain IbreportsError, which is not retried."""
    cls = errors.error_class(report.source_error_types.get(source, "")) or IbreportsError
    # The report keeps the outcomes of files handled before the failure.
    return cls(report.source_errors[source], report=report.to_dict())


@task(
    name="fetch-source",
    task_run_name="fetch-{source}",
    retries=3,
    retry_delay_seconds=exponential_backoff(10),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
    persist_result=False,  # results sit next to secrets: never written anywhere
    cache_policy=None,
)
def fetch_source(
    config: str,
    source: str,
    since: date | None = None,
    until: date | None = None,
    dry_run: bool = False,
    force: bool = False,
    slot_timeout: float = SLOT_TIMEOUT,
) -> dict:
    """One source's retrieval run; returns the RunReport as a plain dict."""
    logger = get_run_logger()
    cfg = load_config(config)
    src = cfg.source(source)
    name = server_limit_name(src)
    slots = _fit_to_limit(src, server_slots(cfg, src))
    try:
        # No limit of that name: run unthrottled, without Prefect's "limit does not exist"
        # warning on every run. Slots are leased: a crashed holder's come back when the lease expires.
        with (contextlib.nullcontext() if slots is None
              else concurrency(name, occupy=slots, timeout_seconds=slot_timeout, strict=False)):
            report = fetch(cfg, sources=[source], since=since, until=until, dry_run=dry_run, force=force,
                           origin=run_origin())
    except AcquireConcurrencySlotTimeoutError:
        raise ServerBusy(
            f"{source}: no {slots} slot(s) of concurrency limit '{name}' came free within {slot_timeout:g} s. "
            f"Other runs hold them (`prefect gcl inspect {name}`); a crashed run's slots come back "
            "when its lease expires (about 5 minutes). Raise the limit or run later.",
        ) from None
    if source in report.source_errors:
        raise _source_error(report, source)
    logger.info("%s: %s", source, report.summary_line())
    for item in report.failed:
        logger.error("%s: %s %s: %s", source, item.name, item.outcome, item.reason)
    if report.failed:  # the task ends Failed (no traceback: each file was logged above), never retried
        return Failed(message=f"{source}: {len(report.failed)} of {len(report.acted_on)} file(s) failed",
                      data=report.to_dict())
    return report.to_dict()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _run_id() -> str:
    try:
        return str(get_run_context().flow_run.id)
    except Exception:  # noqa: BLE001 - outside a flow run (direct call in tests)
        return "local"


def run_origin() -> dict[str, str]:
    """The flow run, for run records and alerts: its id, name and UI link (PREFECT_UI_URL)."""
    from prefect.runtime import flow_run
    from prefect.utilities.urls import url_for

    if not flow_run.id:
        return {}
    origin = {"prefect_flow_run_id": str(flow_run.id), "prefect_flow_run_name": str(flow_run.name or "")}
    link = url_for("flow-run", obj_id=flow_run.id)
    if link:
        origin["prefect_flow_run_url"] = link
    return origin


def run_sources(
    config: str,
    sources: list[str],
    since: date | None,
    until: date | None,
    dry_run: bool,
    force: bool,
) -> RunReport:
    """Submit one task per source (bounded by the flow's task runner) and merge the reports."""
    merged = RunReport(run_id=_run_id(), started=_now(), dry_run=dry_run, force=force, sources=list(sources),
                       origin=run_origin())
    futures = [
        fetch_source.submit(config, name, since=since, until=until, dry_run=dry_run, force=force)
        for name in sources
    ]
    for name, future in zip(sources, futures):
        value = future.result(raise_on_failure=False)
        if isinstance(value, BaseException):
            partial = value.report if isinstance(value, IbreportsError) else None
            if partial:
                merged.files.extend(RunReport.from_dict(partial).files)
            merged.source_errors[name] = str(value) or type(value).__name__
            merged.source_error_types[name] = type(value).__name__
            continue
        part = RunReport.from_dict(value)
        merged.files.extend(part.files)
        merged.warn_days = part.warn_days
        merged.open_conflicts = sorted(set(merged.open_conflicts) | set(part.open_conflicts))
    merged.finished = _now()
    return merged


def _markdown(report: RunReport, title: str) -> str:
    lines = [f"# {title}", "", f"**{report.summary_line() or 'nothing to do'}**", ""]
    lines.append(f"Sources: {', '.join(report.sources) or 'none'}; run {report.run_id}.")
    if report.origin.get("prefect_flow_run_url"):
        lines.append(f"Flow run: [{report.origin.get('prefect_flow_run_name')}]({report.origin['prefect_flow_run_url']})")
    if report.dry_run:
        lines.append("Dry run: nothing was downloaded or archived.")
    for name, error in sorted(report.source_errors.items()):
        # The error class says what kind of failure it was ("host key refused", "login refused", ...).
        label = getattr(errors.error_class(report.source_error_types.get(name, "")), "summary", None) or "failed"
        lines.append(f"- source **{name}** {label}: {error}")
    for item in report.failed:
        lines.append(f"- `{item.name}` {item.outcome}: {item.reason}")
    for item in report.at_risk:
        lines.append(f"- `{item.name}` not archived, {item.days_left} day(s) before the server purges it")
    return "\n".join(lines) + "\n"


# The artifact's columns: what happened first, then the short ones; long ones (keys, signature) last.
ARTIFACT_COLUMNS = ("outcome", "file", "statement date", "days left", "reason", "source", "account", "size",
                    "code", "deleted from server", "archive keys", "signature")


def artifact_rows(report: RunReport) -> list[dict[str, str]]:
    """The table artifact's rows: the library's table, outcome first (the UI shows the first columns)."""
    return [{column: row[column] for column in ARTIFACT_COLUMNS if column in row} for row in table_rows(report)]


def publish(report: RunReport, title: str) -> None:
    """Table artifact (one row per file) plus a markdown summary; no secrets in either."""
    create_table_artifact(
        table=artifact_rows(report),
        key=RUN_ARTIFACT_KEY,
        description=f"{title}: {report.summary_line()}",
    )
    create_markdown_artifact(markdown=_markdown(report, title), key=SUMMARY_ARTIFACT_KEY, description=title)


def finish(report: RunReport, config: str) -> State:
    """Send alerts; the run's final state: Failed when anything failed (after the artifacts exist).

    A state rather than an exception: the reason is logged once, without a traceback. When the
    Prefect server tells a person of this run's failure (automations.yaml), the run does not
    send its own failure alert too: one message per failed run.
    """
    logger = get_run_logger()
    cfg = load_config(config)
    failed = len(report.failed)
    broken = bool(failed or report.source_errors)
    if cfg.alerts.urls and not report.dry_run:
        skip = ("failed", "unreachable") if broken and server_tells_failures() else ()
        send_alerts(cfg, report, skip=skip)
    for item in report.at_risk:
        logger.warning("%s is not archived and is purged in %d day(s)", item.name, item.days_left)
    if broken or report.open_conflicts:  # an open conflict fails every run until resolved
        return run_failed(
            f"{failed} of {len(report.acted_on)} file(s) failed and "
            f"{len(report.source_errors)} of {len(report.sources)} source(s) could not be retrieved "
            f"({report.summary_line()}){_problems(report)}; see the '{RUN_ARTIFACT_KEY}' artifact."
        )
    counts = f"{report.count('archived')} archived, {failed} failed"
    for outcome in ("already-archived", "verified", "waiting"):
        if report.count(outcome):
            counts += f", {report.count(outcome)} {outcome.replace('-', ' ')}"
    return Completed(message=counts, data={
        "files": len(report.acted_on),
        "archived": report.count("archived"),
        "already_archived": report.count("already-archived"),
        "verified": report.count("verified"),
        "planned": report.count("planned"),
        "waiting": report.count("waiting"),
        "bytes_archived": report.bytes_archived,
    })


def _problems(report: RunReport, most: int = 5) -> str:
    """What failed, with its remedy, for the state message (which the server's failure alert carries)."""
    lines = [f"source {name}: {error}" for name, error in sorted(report.source_errors.items())]
    lines += [f"{item.name}: {item.reason}" for item in report.failed]
    if not lines:
        return ""
    more = f"; and {len(lines) - most} more" if len(lines) > most else ""
    return ": " + "; ".join(lines[:most]) + more
