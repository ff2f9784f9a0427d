"""Flow ``retrieve-statements``: the daily retrieval run, one task per source."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.deployments import run_deployment
from prefect.task_runners import ThreadPoolTaskRunner

from ibreports.config import load_config

from flows.common import MAX_PARALLEL_SOURCES, SUMMARY_ARTIFACT_KEY, finish, publish, resolve_config, run_sources

# Fan-out children go to a deployment without the daily one's CANCEL_NEW limit,
# which would otherwise cancel them as collisions with their parent.
FAN_OUT_DEPLOYMENT = "retrieve-statements/per-source"


@flow(
    name="retrieve-statements",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_SOURCES),
    persist_result=False,
)
def retrieve_statements(
    config: str | None = None,
    sources: list[str] | None = None,
    since: date | None = None,
    until: date | None = None,
    dry_run: bool = False,
    fan_out: bool = False,
    fan_out_deployment: str = FAN_OUT_DEPLOYMENT,
) -> dict[str, Any]:
    """Fetch new statements from every (or the named) source into the archive.

    ``config`` defaults to $IBREPORTS_CONFIG, else ibreports.toml in the working
    folder. With ``fan_out`` each source becomes its own flow run of
    ``fan_out_deployment`` so several workers share the work.
    """
    path = resolve_config(config)
    names = [s.name for s in load_config(path).select(sources)]
    if fan_out and len(names) > 1:
        # Children get the config as given: each worker resolves it in its own environment.
        return _fan_out(config, names, since, until, dry_run, fan_out_deployment)
    report = run_sources(path, names, since, until, dry_run, force=False)
    publish(report, "Statement retrieval")
    return finish(report, path)


def _fan_out(
    config: str | None,
    names: list[str],
    since: date | None,
    until: date | None,
    dry_run: bool,
    deployment: str,
) -> dict[str, Any]:
    """Start one flow run per source and return at once (timeout=0): workers pick them up."""
    logger = get_run_logger()
    started = {}
    for name in names:
        params = {"config": config, "sources": [name], "since": since, "until": until, "dry_run": dry_run}
        run = run_deployment(deployment, parameters=params, timeout=0, flow_run_name=f"fetch-{name}")
        started[name] = str(run.id)
        logger.info("started flow run %s for source %s", run.id, name)
    lines = ["# Statement retrieval (fan-out)", ""]
    lines += [f"- {name}: flow run `{run_id}` of {deployment}" for name, run_id in started.items()]
    create_markdown_artifact(markdown="\n".join(lines) + "\n", key=SUMMARY_ARTIFACT_KEY)
    return {"fan_out": started}
