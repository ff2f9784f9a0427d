"""`ibreports status` and `ibreports demo`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ..config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="every remote file, its days left before the purge, and whether it is archived")
    p.add_argument("--source", action="append", dest="sources", metavar="NAME", help="only this source (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output (schema in docs/fetch-and-archive.md)")
    p.add_argument("--alert", action="store_true", help="also send an alert (see [alerts]) for files at risk")
    p.set_defaults(handler=status)

    p = sub.add_parser("demo", help="the whole pipeline against a local sandbox server (no IBKR account needed)")
    p.add_argument("--dir", default="demo", help="working folder for keys, server files and archive (default: ./demo)")
    p.set_defaults(handler=demo)


def status(args: argparse.Namespace) -> int:
    from ..status import collect_status, format_table

    config = load_config(args.config)
    report = collect_status(config, args.sources)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1, sort_keys=True))
    else:
        print(format_table(report))
    if args.alert:
        from ..alerts import send_alerts

        send_alerts(config, None, report.files)
    return report.exit_code


def demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    folder = Path(args.dir).absolute()
    return run_demo(folder, lambda config: run_flow(folder, config))


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
