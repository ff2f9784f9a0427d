"""`ibreports coverage` and `ibreports verify`: what the archive holds, and whether it is intact."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..config import load_config
from ..errors import ConfigError
from .fetch import parse_date


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("coverage", help="per account and statement kind: first/last date, count and the gaps")
    p.add_argument("--account", action="append", dest="accounts", metavar="ID", help="only this account (repeatable)")
    p.add_argument("--since", type=parse_date, help="statement date from (YYYY-MM-DD)")
    p.add_argument("--until", type=parse_date, help="statement date until (YYYY-MM-DD)")
    p.add_argument("--json", action="store_true", help="machine-readable output (schema in docs/coverage.md)")
    p.add_argument("--offline", action="store_true", help="do not list the servers (gaps are then 'unknown')")
    p.set_defaults(handler=coverage)

    p = sub.add_parser("verify", help="re-read every archived object against the ledger the archive keeps")
    p.add_argument("--since", type=parse_date, help="only objects dated from (YYYY-MM-DD)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=verify)


def coverage(args: argparse.Namespace) -> int:
    from ..coverage import collect_coverage
    from ..coverage_publish import format_table

    if args.since and args.until and args.since > args.until:
        raise ConfigError(f"--since {args.since} is after --until {args.until}.", "Swap them.")
    from ..archive import open_archive
    from ..conflicts import open_summaries

    config = load_config(args.config)
    keys = open_archive(config.archive).inventory()  # one listing: statements, and conflicts still open
    report = collect_coverage(config, args.accounts, args.since, args.until, servers=not args.offline, keys=keys)
    found = open_summaries(keys)  # durable: exit 1 while one is open
    if args.json:
        print(json.dumps({**report.to_dict(), "conflicts": found}, indent=1, sort_keys=True))
    else:
        print("\n".join([format_table(report), *(f"! CONFLICT {c['id']}: a delivery of {c['source']}/{c['remote_name']} "
                                                 "contradicts the archive (open: `ibreports conflicts list`)"
                                                 for c in found)]))
    return max(report.exit_code, 1 if found else 0)


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
