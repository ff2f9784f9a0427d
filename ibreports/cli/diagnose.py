"""`ibreports doctor` and `ibreports trust-host`."""

from __future__ import annotations

import argparse
import json
import sys

from ..config import load_config
from ..errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check each source, the PGP keys and the archive step by step, with fixes")
    p.add_argument("--source", action="append", dest="sources", metavar="NAME", help="only this source (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=doctor)

    p = sub.add_parser("trust-host", help="show an sFTP server's host key fingerprint and pin it in known_hosts")
    p.add_argument("--source", required=True, metavar="NAME", help="the sFTP source")
    p.add_argument("--fingerprint", metavar="SHA256:...", help="record only if the server shows exactly this key")
    p.add_argument("--yes", action="store_true", help="record without asking (you checked the fingerprint elsewhere)")
    p.add_argument("--replace", action="store_true", help="replace a different key already recorded for this host")
    p.set_defaults(handler=trust_host)


def doctor(args: argparse.Namespace) -> int:
    from ..doctor import diagnose, format_text

    config = load_config(args.config)
    result = diagnose(config, args.sources)
    print(json.dumps(result.to_dict(), indent=1) if args.json else format_text(result))
    return result.exit_code


def trust_host(args: argparse.Namespace) -> int:
    from ..trust import changed_error, declined_error, mismatch_error, normalize_fingerprint, record, scan

    source = load_config(args.config).source(args.source)
    expected = normalize_fingerprint(args.fingerprint) if args.fingerprint else None
    scanned = scan(source)
    print(f"{scanned.host_id} shows host key {scanned.key_type} {scanned.fingerprint}")
    if scanned.state == "same":
        print(f"Already recorded in {source.settings.known_hosts}; nothing to do.")
        return 0
    if scanned.state == "changed":
        if not args.replace:
            raise changed_error(scanned, source)
        print(
            f"warning: replacing {', '.join(scanned.recorded)} for {scanned.host_id}: a changed host key can mean "
            "someone is intercepting the connection; go on only if IBKR confirmed the new fingerprint.",
            file=sys.stderr,
        )
    if expected is not None:
        if expected != scanned.fingerprint:
            raise mismatch_error(scanned, expected)
        print("It matches --fingerprint.")
    elif not args.yes and not _confirm(scanned.host_id):
        raise declined_error(scanned, source)
    path = record(source, scanned.key, replace=args.replace)
    print(f"Recorded {scanned.host_id} {scanned.key_type} {scanned.fingerprint} in {path}.")
    return 0


def _confirm(host: str) -> bool:
    """y/N on a terminal; without one, refuse with the way to confirm non-interactively."""
    if sys.stdin is None or not sys.stdin.isatty():
        raise ConfigError(
            f"No terminal to confirm the host key of {host}.",
            "Check the fingerprint with IBKR, then run again with --fingerprint SHA256:... (or --yes).",
        )
    try:
        answer = input(f"Trust this key for {host}? Check the fingerprint with IBKR first. [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")
