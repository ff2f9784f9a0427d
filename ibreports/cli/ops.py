"""`ibreports status` and `ibreports demo`."""

from __future__ import annotations

import argparse
import json
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
    """The one command that runs a Prefect flow: only it imports the flows (and so Prefect), when it runs."""
    from ..demo import run_demo

    runner = args.flow_runner
    if runner is None:
        from flows.demo import run_flow as runner
    folder = Path(args.dir).absolute()
    return run_demo(folder, lambda config: runner(folder, config))
