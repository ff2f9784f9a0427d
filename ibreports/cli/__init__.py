"""Thin command layer: parse arguments, call the library, print, map errors to exit codes.

Each submodule registers its commands with ``register(subparsers)``; a handler takes
the parsed arguments and returns the exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

from .. import __version__
from ..errors import IbreportsError

COMMAND_MODULES = ("keys", "fetch", "ops", "diagnose")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ibreports",
        description="Interactive Brokers statements, off IBKR's servers and into storage you own.",
    )
    parser.add_argument("--version", action="version", version=f"ibreports {__version__}")
    parser.add_argument("--config", help="config file (default: $IBREPORTS_CONFIG or ./ibreports.toml)")
    parser.add_argument("--debug", action="store_true", help="verbose logs and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        import_module(f"{__name__}.{name}").register(sub)
    _accept_global_flags_anywhere(sub)
    return parser


def _accept_global_flags_anywhere(sub: argparse._SubParsersAction) -> None:
    """`ibreports fetch --config X` works like `ibreports --config X fetch`."""
    for command in sub.choices.values():
        command.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_global_flags_anywhere(action)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help/--version exit 0
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "gnupg", "httpx", "apprise"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # paramiko logs tracebacks at ERROR for failures we report ourselves, with a remedy.
    logging.getLogger("paramiko").setLevel(logging.WARNING if args.debug else logging.CRITICAL)
    _clean_start()
    try:
        return int(args.handler(args) or 0)
    except IbreportsError as exc:
        if args.debug:
            logging.exception("failed")
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.remedy:
            print(f"  remedy: {exc.remedy}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback only with --debug
        if args.debug:
            raise
        print(f"error: unexpected {type(exc).__name__}; nothing was deleted on the server.", file=sys.stderr)
        print("  remedy: run again with --debug and report the traceback.", file=sys.stderr)
        return 1


def _clean_start() -> None:
    """Every command: no core dumps (secrets may be read), and the GnuPG homes and key folders
    a killed command left behind are stopped and removed."""
    from ..pgp import disable_core_dumps, sweep_abandoned_homes

    disable_core_dumps()
    if removed := sweep_abandoned_homes():
        logging.getLogger("ibreports").warning(
            "removed %d temporary GnuPG home(s) or key folder(s) left by an interrupted command", removed)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
