"""Shared flow pieces: the per-source task, its retry rule, and the run's artifacts.

A task is one source's whole run (one ``pipeline.fetch`` over one source, with the
library's own bounded parallelism inside). Per-file tasks would cost a few ms of
client time plus server-side event recording each, which adds up over thousands
of statements and buys nothing: the archive already makes a re-run resume.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.concurrency.sync import concurrency
from prefect.context import get_run_context
from prefect.tasks import exponential_backoff

from ibreports import errors
from ibreports.alerts import send_alerts
from ibreports.config import SourceConfig, config_path, load_config
from ibreports.errors import ConnectionFailure, IbreportsError, is_transient
from ibreports.pipeline import fetch
from ibreports.report import RunReport, table_rows

RUN_ARTIFACT_KEY = "ibreports-run"
SUMMARY_ARTIFACT_KEY = "ibreports-summary"
MAX_PARALLEL_SOURCES = 4


class RunFailed(Exception):
    """The run finished, but files failed or sources were unreachable: the flow run ends Failed."""


def resolve_config(config: str | None) -> str:
    """Absolute config path (argument, else IBREPORTS_CONFIG, else ./ibreports.toml).

    Resolved once, at the start of the flow, so nothing later depends on the cwd.
    """
    return str(config_path(config or None))


def server_limit_name(source: SourceConfig) -> str:
    """Global concurrency limit shared by every run that talks to one IBKR server."""
    return f"ibkr-{source.host}"


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only broken or timed-out connections, never refused keys or credentials."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - an unreadable state is not worth a retry
        return False
    return isinstance(exc, BaseException) and is_transient(exc)


def _source_error(report: RunReport, source: str) -> IbreportsError:
    """Rebuild the source-level error the pipeline recorded, keeping its class."""
    kind = report.source_error_types.get(source, "")
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, IbreportsError)):
        cls = ConnectionFailure
    exc = cls(report.source_errors[source])
    exc.report = report.to_dict()  # keeps outcomes of files handled before the failure
    return exc


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
) -> dict:
    """One source's retrieval run; returns the RunReport as a plain dict."""
    logger = get_run_logger()
    cfg = load_config(config)
    src = cfg.source(source)
    # strict=False: without a limit named like this, the block simply runs.
    with concurrency(server_limit_name(src), occupy=1, strict=False):
        report = fetch(cfg, sources=[source], since=since, until=until, dry_run=dry_run, force=force)
    if source in report.source_errors:
        raise _source_error(report, source)
    logger.info("%s: %s", source, report.summary_line())
    for item in report.failed:
        logger.error("%s: %s %s: %s", source, item.name, item.outcome, item.reason)
    return report.to_dict()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _run_id() -> str:
    try:
        return str(get_run_context().flow_run.id)
    except Exception:  # noqa: BLE001 - outside a flow run (direct call in tests)
        return "local"


def run_sources(
    config: str,
    sources: list[str],
    since: date | None,
    until: date | None,
    dry_run: bool,
    force: bool,
) -> RunReport:
    """Submit one task per source (bounded by the flow's task runner) and merge the reports."""
    merged = RunReport(run_id=_run_id(), started=_now(), dry_run=dry_run, force=force, sources=list(sources))
    futures = [
        fetch_source.submit(config, name, since=since, until=until, dry_run=dry_run, force=force)
        for name in sources
    ]
    for name, future in zip(sources, futures):
        value = future.result(raise_on_failure=False)
        if isinstance(value, BaseException):
            partial = getattr(value, "report", None)
            if partial:
                merged.files.extend(RunReport.from_dict(partial).files)
            merged.source_errors[name] = str(value) or type(value).__name__
            merged.source_error_types[name] = type(value).__name__
            continue
        part = RunReport.from_dict(value)
        merged.files.extend(part.files)
        merged.warn_days = part.warn_days
    merged.finished = _now()
    return merged


def _markdown(report: RunReport, title: str) -> str:
    lines = [f"# {title}", "", f"**{report.summary_line() or 'nothing to do'}**", ""]
    lines.append(f"Sources: {', '.join(report.sources) or 'none'}; run {report.run_id}.")
    if report.dry_run:
        lines.append("Dry run: nothing was downloaded or archived.")
    for name, error in sorted(report.source_errors.items()):
        lines.append(f"- source **{name}** failed: {error}")
    for item in report.failed:
        lines.append(f"- `{item.name}` {item.outcome}: {item.reason}")
    for item in report.at_risk:
        lines.append(f"- `{item.name}` not archived, {item.days_left} day(s) before the server purges it")
    return "\n".join(lines) + "\n"


def publish(report: RunReport, title: str) -> None:
    """Table artifact (one row per file) plus a markdown summary; no secrets in either."""
    create_table_artifact(
        table=table_rows(report),
        key=RUN_ARTIFACT_KEY,
        description=f"{title}: {report.summary_line()}",
    )
    create_markdown_artifact(markdown=_markdown(report, title), key=SUMMARY_ARTIFACT_KEY, description=title)


def finish(report: RunReport, config: str) -> dict[str, Any]:
    """Send alerts, then raise RunFailed when anything failed (after the artifacts exist)."""
    logger = get_run_logger()
    cfg = load_config(config)
    if cfg.alerts.urls and not report.dry_run:
        send_alerts(cfg, report)
    for item in report.at_risk:
        logger.warning("%s is not archived and is purged in %d day(s)", item.name, item.days_left)
    failed = len(report.failed)
    if failed or report.source_errors:
        raise RunFailed(
            f"{failed} of {len(report.files)} file(s) failed and "
            f"{len(report.source_errors)} of {len(report.sources)} source(s) could not be retrieved "
            f"({report.summary_line()}); see the '{RUN_ARTIFACT_KEY}' artifact."
        )
    return {
        "files": len(report.files),
        "archived": report.count("archived"),
        "already_archived": report.count("already-archived"),
        "planned": report.count("planned"),
        "waiting": report.count("waiting"),
        "bytes_archived": report.bytes_archived,
    }
