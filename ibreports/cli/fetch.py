"""`ibreports fetch`: one retrieval run, with progress and a summary table."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from datetime import date

from ..config import load_config
from ..errors import ConfigError
from ..report import OUT_OF_RANGE, RunReport

MAX_ROWS = 40


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="list, download, verify, decrypt and archive new statements")
    p.add_argument("--source", action="append", dest="sources", metavar="NAME", help="only this source (repeatable)")
    p.add_argument("--since", type=parse_date, metavar="DATE", help="statement date from (YYYY-MM-DD)")
    p.add_argument("--until", type=parse_date, metavar="DATE", help="statement date until (YYYY-MM-DD)")
    p.add_argument("--dry-run", action="store_true", help="plan only: show what would be fetched")
    p.add_argument("--force", action="store_true", help="re-download archived files and verify them against the archive")
    p.set_defaults(handler=run)


def _not_in_report(record: logging.LogRecord) -> bool:
    """Console filter: a line the printed report says anyway (a file's reason, a source's error) once only."""
    return not getattr(record, "in_report", False)


def parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date in the form YYYY-MM-DD") from None


def run(args: argparse.Namespace) -> int:
    if args.since and args.until and args.since > args.until:
        raise ConfigError(f"--since {args.since} is after --until {args.until}.", "Swap them.")
    config = load_config(args.config)
    from ..pipeline import RunOptions, fetch  # lazy: keeps `ibreports --help` fast

    options = RunOptions(tuple(args.sources) if args.sources else None, args.since, args.until, args.dry_run,
                         args.force)
    progress = Progress(sys.stderr)
    # The console handler main() set up (not a test's capture): with --debug it shows everything, twice.
    console = [] if args.debug else [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    for handler in console:
        handler.addFilter(_not_in_report)
    try:
        report = fetch(config, progress=progress, options=options)
    finally:
        progress.done()
        for handler in console:
            handler.removeFilter(_not_in_report)
    print_report(report)
    if config.alerts.urls and not report.dry_run:
        from ..alerts import send_alerts

        send_alerts(config, report)
    return report.exit_code


class Progress:
    """Files and bytes done: a live line on a terminal, a log line every 10 s otherwise."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.counts = {"files": 0, "bytes": 0, "total-files": 0, "total-bytes": 0}
        self.lock = threading.Lock()
        self.start = self.last = time.monotonic()

    def __call__(self, event: str, amount: int) -> None:
        with self.lock:
            self.counts[event] += amount
            now = time.monotonic()
            if now - self.last >= (0.2 if self.tty else 10.0):
                self.last = now
                self.show(end="\r" if self.tty else "\n")

    def show(self, end: str) -> None:
        c = self.counts
        rate = c["bytes"] / max(time.monotonic() - self.start, 1e-6) / 1e6
        self.stream.write(
            f"files {c['files']}/{c['total-files']}  {c['bytes'] / 1e6:.1f}/{c['total-bytes'] / 1e6:.1f} MB"
            f"  {rate:.1f} MB/s\033[K{end}" if self.tty else
            f"progress: files {c['files']}/{c['total-files']}, {c['bytes'] / 1e6:.1f}/{c['total-bytes'] / 1e6:.1f} MB{end}"
        )
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self.counts["total-files"]:
            self.show(end="\n")


def print_report(report: RunReport) -> None:
    interesting = [f for f in report.files  # acted on
                   if f.outcome not in ("already-archived", OUT_OF_RANGE) or f.deleted_from_server]
    interesting.sort(key=lambda f: (f.outcome not in ("failed", "rejected"), f.source, f.name))
    if interesting:
        widths = (10, 16, 10, 11, 6)
        print(f"{'outcome':<{widths[0]}} {'account':<{widths[1]}} {'date':<{widths[2]}} {'size':>{widths[3]}} {'left':>{widths[4]}}  file")
        for f in interesting[:MAX_ROWS]:
            print(
                f"{f.outcome:<{widths[0]}} {(f.account or '-'):<{widths[1]}} {f.statement_date:<{widths[2]}} "
                f"{f.size:>{widths[3]}} {f.days_left:>{widths[4]}}  {f.source}/{f.name!s:.120}"
            )
            if f.reason:
                print(f"{'':<{widths[0]}} reason: {f.reason}")
            if f.deleted_from_server:
                print(f"{'':<{widths[0]}} deleted from the server (delete_after_archive; its archive copies verified)")
        if len(interesting) > MAX_ROWS:
            print(f"... and {len(interesting) - MAX_ROWS} more (see the run record)")
    for note in report.notes:
        print(f"note: {note}")
    for source, message in report.source_errors.items():
        print(f"source {source}: {message}")
    for f in report.at_risk:
        where = " (outside --since/--until)" if f.outcome == OUT_OF_RANGE else ""
        print(f"AT RISK: {f.source}/{f.name}{where} is not archived and the server purges it in {f.days_left} day(s)")
    for ident in report.open_conflicts[:MAX_ROWS]:
        print(f"OPEN CONFLICT: {ident}: see `ibreports conflicts list`; resolve it with "
              "`ibreports conflicts resolve ID --keep archived|new --reason TEXT`")
    prefix = "dry run: " if report.dry_run else ""
    print(f"{prefix}{report.summary_line()}" + (f"; run record: {report.record_key}" if report.record_key else ""))
