"""`ibreports coverage` and `ibreports verify`: what the archive holds, and whether it is intact."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..config import load_config
from ..errors import ConfigError
from ..files import create_private
from .fetch import parse_date


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("coverage", help="per account and statement kind: first/last date, count and the gaps")
    p.add_argument("--account", action="append", dest="accounts", metavar="ID", help="only this account (repeatable)")
    p.add_argument("--since", type=parse_date, help="statement date from (YYYY-MM-DD)")
    p.add_argument("--until", type=parse_date, help="statement date until (YYYY-MM-DD)")
    p.add_argument("--json", action="store_true", help="machine-readable output (schema in docs/coverage.md)")
    p.add_argument("--offline", action="store_true", help="do not list the servers (gaps are then 'unknown')")
    p.add_argument("--html", metavar="FILE", type=Path,
                   help="also write the calendar (held, missing, at risk, conflict) as one self-contained HTML page")
    p.set_defaults(handler=coverage)

    p = sub.add_parser("verify", help="re-read every archived object against the ledger the archive keeps")
    p.add_argument("--since", type=parse_date, help="only objects dated from (YYYY-MM-DD)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=verify)


def coverage(args: argparse.Namespace) -> int:
    from ..coverage_inputs import collect_coverage
    from ..coverage_publish import format_table

    if args.since and args.until and args.since > args.until:
        raise ConfigError(f"--since {args.since} is after --until {args.until}.", "Swap them.")
    from ..archive import open_archive
    from ..conflicts import open_summaries

    config = load_config(args.config)
    keys = open_archive(config.archive).inventory()  # one listing: statements, and conflicts still open
    report = collect_coverage(config, args.accounts, args.since, args.until, servers=not args.offline, keys=keys)
    found = open_summaries(keys)  # durable: exit 1 while one is open
    if args.html:
        _write_html(args.html, report)
    if args.json:
        print(json.dumps({**report.to_dict(), "conflicts": found}, indent=1, sort_keys=True))
    else:
        print("\n".join([format_table(report), *(f"! CONFLICT {c['id']}: a delivery of {c['source']}/{c['remote_name']} "
                                                 "contradicts the archive (open: `ibreports conflicts list`)"
                                                 for c in found)]))
    return max(report.exit_code, 1 if found else 0)


def _write_html(path: Path, report) -> None:
    from ..coverage_calendar import html

    page = html(report).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(create_private(tmp), "wb") as out:  # 0600: it names accounts
            out.write(page)
        tmp.replace(path)  # a reader (a browser, a web server) never sees half a page
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"--html {path}: cannot write it ({exc.strerror or exc}).",
                          "Give a path in a folder that exists and that you can write to.") from None
    print(f"calendar written to {path}", file=sys.stderr)


def verify(args: argparse.Namespace) -> int:
    from ..verify import format_result, verify_archive

    config = load_config(args.config)
    progress = _Progress(sys.stderr)
    try:
        result = verify_archive(config.archive, args.since, progress)
    finally:
        progress.done()
    print(json.dumps(result.to_dict(), indent=1, sort_keys=True) if args.json else format_result(result))
    return result.exit_code


class _Progress:
    """Objects and bytes checked: a live line on a terminal, nothing otherwise."""

    def __init__(self, stream) -> None:
        self.stream, self.tty, self.last = stream, stream.isatty(), 0.0

    def __call__(self, done: int, total: int, size: int) -> None:
        now = time.monotonic()
        if self.tty and (now - self.last > 0.2 or done == total):
            self.last = now
            self.stream.write(f"\rverified {done}/{total} object(s), {size / 1e6:.1f} MB ")
            self.stream.flush()

    def done(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()
