"""Flow ``retrieve-statements``: the daily retrieval run, one task per source."""

from __future__ import annotations

import time
from datetime import date
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.states import Cancelling, Completed, State
from prefect.task_runners import ThreadPoolTaskRunner

from ibreports.config import load_config
from ibreports.coverage_publish import daily_coverage

from flows.common import MAX_PARALLEL_SOURCES, SUMMARY_ARTIFACT_KEY, finish, publish, resolve_config, run_sources
from flows.runs import guarded, run_failed, run_name

# Fan-out children go to a deployment without the daily one's CANCEL_NEW limit,
# which would otherwise cancel them as collisions with their parent.
FAN_OUT_DEPLOYMENT = "retrieve-statements/per-source"
FAN_OUT_TIMEOUT = 4 * 3600.0  # seconds the parent waits for its children
POLL_SECONDS = 2.0
COVERAGE_ARTIFACT_KEY = "ibreports-coverage"
CALENDAR_ARTIFACT_KEY = "ibreports-coverage-calendar"


@flow(
    name="retrieve-statements",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_SOURCES),
    persist_result=False,
    flow_run_name=lambda: run_name("retrieve"),
)
def retrieve_statements(
    config: str | None = None,
    sources: list[str] | None = None,
    since: date | None = None,
    until: date | None = None,
    dry_run: bool = False,
    fan_out: bool = False,
    fan_out_deployment: str = FAN_OUT_DEPLOYMENT,
    fan_out_timeout: float = FAN_OUT_TIMEOUT,
) -> State:
    """Fetch new statements from every (or the named) source into the archive.

    Args:
        config: Config file on the worker. Default: $IBREPORTS_CONFIG, else ibreports.toml
            in IBREPORTS_HOME. Never put secrets in parameters.
        sources: Only these sources (names of [[sources]] in the config). Default: all.
        since: Only statements dated on or after this day (YYYY-MM-DD).
        until: Only statements dated on or before this day (YYYY-MM-DD).
        dry_run: List what would be downloaded and archived; change nothing.
        fan_out: One flow run of fan_out_deployment per source, so several workers share
            the work; this run waits for them and fails when one did not complete.
        fan_out_deployment: Deployment that runs one source (fan_out only).
        fan_out_timeout: Seconds to wait for the fan-out runs; later ones are cancelled.
    """
    return guarded(_retrieve, config, sources, since, until, dry_run, fan_out, fan_out_deployment, fan_out_timeout)


def _retrieve(
    config: str | None,
    sources: list[str] | None,
    since: date | None,
    until: date | None,
    dry_run: bool,
    fan_out: bool,
    fan_out_deployment: str,
    fan_out_timeout: float,
) -> State:
    path = resolve_config(config)
    names = [s.name for s in load_config(path).select(sources)]
    if fan_out and len(names) > 1:
        # Children get the config as given: each worker resolves it in its own environment.
        return _fan_out(config, names, since, until, dry_run, fan_out_deployment, fan_out_timeout)
    report = run_sources(path, names, since, until, dry_run, force=False)
    publish(report, "Statement retrieval")
    if not dry_run and sources is None:  # the whole run: what the archive now covers, and alerts on new gaps
        try:  # daily_coverage never raises; this guards the artifacts too: coverage never fails a good run
            published = daily_coverage(load_config(path), report)
            create_markdown_artifact(markdown=published.summary, key=COVERAGE_ARTIFACT_KEY, description="Statement coverage")
            create_markdown_artifact(markdown=published.calendar, key=CALENDAR_ARTIFACT_KEY,
                                     description="Statement coverage calendar")
        except Exception as exc:  # noqa: BLE001
            get_run_logger().warning("coverage not published: unexpected %s: %s", type(exc).__name__, str(exc)[:200])
    return finish(report, path)


def _fan_out(
    config: str | None,
    names: list[str],
    since: date | None,
    until: date | None,
    dry_run: bool,
    deployment: str,
    timeout: float,
) -> State:
    """Start one flow run per source (workers pick them up), wait for all, fail if any did not complete."""
    logger = get_run_logger()
    started: dict[str, UUID] = {}
    for name in names:
        params = {"config": config, "sources": [name], "since": since, "until": until, "dry_run": dry_run}
        run = run_deployment(deployment, parameters=params, timeout=0, flow_run_name=f"fetch-{name}")
        started[name] = run.id
        logger.info("started flow run %s for source %s", run.id, name)
    states = _wait(started, timeout)
    lines = ["# Statement retrieval (fan-out)", "", f"Child runs of {deployment}:", ""]
    for name, (state, message) in states.items():
        lines.append(f"- {name}: flow run `{started[name]}` **{state}**" + (f": {message}" if message else ""))
    create_markdown_artifact(markdown="\n".join(lines) + "\n", key=SUMMARY_ARTIFACT_KEY)
    bad = sorted(name for name, (state, _) in states.items() if state != "Completed")
    if bad:
        return run_failed(f"{len(bad)} of {len(names)} source run(s) did not complete: {', '.join(bad)}; "
                          f"see the '{SUMMARY_ARTIFACT_KEY}' artifact.")
    return Completed(message=f"{len(names)} source run(s) completed",
                     data={"fan_out": {name: str(run_id) for name, run_id in started.items()}})


def _wait(runs: dict[str, UUID], timeout: float) -> dict[str, tuple[str, str]]:
    """Poll the child runs until all are final or ``timeout`` passes; late ones are cancelled."""
    deadline = time.monotonic() + timeout
    done: dict[str, tuple[str, str]] = {}
    with get_client(sync_client=True) as client:
        while True:
            for name, run_id in runs.items():
                if name not in done and (ended := _ended(client.read_flow_run(run_id).state)):
                    done[name] = ended
            if len(done) == len(runs) or time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECONDS)
        for name, run_id in runs.items():
            if name in done:
                continue
            # Cancelled, so the next daily run does not race it. Not forced: the server's rules
            # cancel a run no worker picked up at once, and never overwrite one that just ended.
            client.set_flow_run_state(run_id, Cancelling(message="parent run timed out"))
            state = client.read_flow_run(run_id).state
            ended = None if state is None or state.is_cancelled() else _ended(state)  # it ended just in time
            done[name] = ended or ("timed out", f"not finished after {timeout:g} s; cancelled")
    return {name: done[name] for name in runs}


def _ended(state: Any) -> tuple[str, str] | None:
    """(state name, message) of a final state, else None."""
    return (state.name, (state.message or "")[:300]) if state is not None and state.is_final() else None
