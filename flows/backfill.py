"""Flow ``backfill-statements``: retrieve what the servers still hold for a date range."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import MAX_PARALLEL_SOURCES, finish, publish, resolve_config, run_sources
from flows.runs import guarded, run_name
from ibreports.config import load_config
from ibreports.errors import ConfigError


@flow(
    name="backfill-statements",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_SOURCES),
    persist_result=False,
    flow_run_name=lambda: run_name("backfill"),
)
def backfill_statements(
    start: date,
    end: date,
    sources: list[str] | None = None,
    force: bool = False,
    config: str | None = None,
) -> State:
    """Archive every statement dated ``start``..``end`` (inclusive) still on the file servers, or made again by a Flex Web Service source.

    IBKR purges files after about 100 days, so older dates are not on its file servers; a
    flexweb source asks IBKR to make the dates the archive lacks again (docs/flexweb.md).

    Args:
        start: First statement date of the range (YYYY-MM-DD, inclusive).
        end: Last statement date of the range (YYYY-MM-DD, inclusive).
        sources: Only these sources (names of [[sources]] in the config). Default: all.
        force: Download files the archive already holds again and verify them against it.
        config: Config file on the worker. Default: $IBREPORTS_CONFIG, else ibreports.toml
            in IBREPORTS_HOME. Never put secrets in parameters.
    """
    return guarded(_backfill, start, end, sources, force, config)


def _backfill(start: date, end: date, sources: list[str] | None, force: bool, config: str | None) -> State:
    if start > end:
        raise ConfigError(
            f"Backfill start {start.isoformat()} is after end {end.isoformat()}.",
            "Pass start <= end (both inclusive, YYYY-MM-DD).",
        )
    logger = get_run_logger()
    path = resolve_config(config)
    names = [s.name for s in load_config(path).select(sources)]
    report = run_sources(path, names, since=start, until=end, dry_run=False, force=force)
    if not report.acted_on and not report.source_errors:
        logger.info("no files between %s and %s", start.isoformat(), end.isoformat())
    publish(report, f"Backfill {start.isoformat()} to {end.isoformat()}")
    return finish(report, path)
