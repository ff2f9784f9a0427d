"""Flow ``verify-archive``: the monthly re-read of archived objects against their recorded SHA-256."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from ibreports.config import load_config
from ibreports.verify import format_result, verify_archive

from flows.common import resolve_config
from flows.runs import guarded, run_failed, run_name

VERIFY_ARTIFACT_KEY = "ibreports-verify"


@flow(name="verify-archive", persist_result=False, flow_run_name=lambda: run_name("verify"))
def verify_archive_flow(config: str | None = None, since: date | None = None) -> Any:
    """Re-read every archived statement and original; fails on any mismatch or missing object.

    Args:
        config: Config file on the worker (for the archive). Default: $IBREPORTS_CONFIG,
            else ibreports.toml in IBREPORTS_HOME.
        since: Only objects of statements dated on or after this day (YYYY-MM-DD). Default: all.
    """
    return guarded(_verify, config, since)


def _verify(config: str | None, since: date | None) -> Any:
    result = verify_archive(load_config(resolve_config(config)).archive, since)
    text = format_result(result)
    get_run_logger().info("%s", text.splitlines()[-1])
    create_markdown_artifact(markdown="# Archive verification\n\n```\n" + text + "\n```\n", key=VERIFY_ARTIFACT_KEY,
                             description="Archive verification")
    if result.exit_code:
        return run_failed(text.splitlines()[-1])
    return result.to_dict()
