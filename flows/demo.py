"""The demo's flow runner: flow ``retrieve-statements`` in-process, with Prefect's console quiet.

``ibreports demo`` (ibreports/cli/ops.py) imports this module when it runs, and only then:
no other command imports Prefect.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def run_flow(folder: Path, config: Path) -> None:
    """Run flow ``retrieve-statements`` in-process; its per-file outcomes land in the archive.

    The demo shows ibreports' own lines only: Prefect's INFO/WARNING console lines (the
    temporary server, run names, states) are held back while the flow runs (they still
    reach the Prefect API), and the temporary server is stopped before the demo goes on.
    """
    # Before Prefect is imported: no telemetry, and an ephemeral server with its own
    # database under the demo folder unless the user points at a real Prefect API.
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    if not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_HOME"] = str(folder / ".prefect")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    from flows.retrieve import retrieve_statements

    already_running = _ephemeral_server() is not None  # e.g. a test harness: not ours to stop
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(_quiet_prefect)
    try:
        if not already_running and not os.environ.get("PREFECT_API_URL"):
            from flows.local_api import start_local_api

            start_local_api()  # a first start migrates a database: progress shown, a generous wait
        state = retrieve_statements(config=str(config), return_state=True)
        if not already_running:
            _stop_ephemeral_server()
    finally:
        for handler in handlers:
            handler.removeFilter(_quiet_prefect)
    if not state.is_completed():
        print(f"flow run ended {state.name}: {state.message or ''}".rstrip(), file=sys.stderr)


def _quiet_prefect(record: logging.LogRecord) -> bool:
    """Console filter: Prefect's records only when they are errors."""
    return record.levelno >= logging.ERROR or not (record.name == "prefect" or record.name.startswith("prefect."))


def _ephemeral_server():
    """Prefect's temporary API server of this process, if one is running."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer._instances.get(None)
    return server if server is not None and server.running else None


def _stop_ephemeral_server() -> None:
    """Flush Prefect's log and event queues, then stop the temporary API server the flow started."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    server = _ephemeral_server()
    if server is None:
        return
    APILogWorker.drain_all()
    EventsWorker.drain_all()
    server.stop()
