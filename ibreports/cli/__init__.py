"""Thin command layer: parse arguments, call the library, print, map errors to exit codes.

Each submodule registers its commands with ``register(subparsers)``; a handler takes
the parsed arguments and returns the exit code. The installed command is :func:`run`.
No command imports Prefect but ``demo``, which runs a flow: it imports ``flows.demo``
when it runs (tests/test_imports.py checks every other command).
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module
from pathlib import Path
from typing import Callable

from .. import __version__
from ..errors import IbreportsError

COMMAND_MODULES = ("keys", "fetch", "ops", "diagnose", "ledger", "conflicts")
# Runs flow retrieve-statements for the demo: (demo folder, config file) -> None (default: flows.demo.run_flow).
FlowRunner = Callable[[Path, Path], object]
CONFIG_HELP = "config file (default: $IBREPORTS_CONFIG or ./ibreports.toml)"
DEBUG_HELP = "verbose logs and tracebacks"

# Shown at the end of each command's --help. A command not named here gets GENERIC_EXIT_CODES.
GENERIC_EXIT_CODES = (
    "exit codes: 0 success, 1 some files failed or are at risk, 2 usage or configuration error,\n"
    "  3 connection, authentication or host-key failure"
)
EXIT_CODES = {
    "fetch": "exit codes: 0 every file archived (or waiting), 1 some files failed or are at risk of purge\n"
             "  (the rest were archived), or a conflict is open, 2 usage or configuration error (also a\n"
             "  misconfigured source), 3 a source could not be reached or refused the login or host key",
    "status": "exit codes: 0 all well, 1 an unarchived file is within warn_days of the purge, or a\n"
              "  conflict is open, 2 configuration error, 3 a source could not be reached (the others are\n"
              "  still listed)",
    "doctor": "exit codes: 0 every check passed, 1 another check failed (archive, PGP sample),\n"
              "  2 a configuration or key problem, 3 a connection, login or host-key problem",
    "trust-host": "exit codes: 0 the key is recorded (or already was), 2 usage or configuration error\n"
                  "  (also: no terminal to confirm, an FTP source), 3 the key was declined, differs from\n"
                  "  --fingerprint, or a different key is recorded (see --replace), or no connection",
    "keygen": "exit codes: 0 keys written, 2 refused: existing keys without --force, a bad passphrase or\n"
              "  option, a folder that cannot be written",
    "keys": "exit codes: 0 success, 2 a wrong passphrase, a damaged, missing or unreadable bundle, keys that\n"
            "  differ (restore without --force), or another usage error; with s3://, a store that refuses\n"
            "  the request or cannot be reached exits as the archive does (1, 2 or 3)",
    "coverage": "exit codes: 0 no gap, 1 a gap exists (older than [coverage] grace_days) or a conflict\n"
                "  is open, 2 configuration error, 3 archive endpoint unreachable",
    "verify": "exit codes: 0 every archived object matches the ledger and no conflict is open, 1 a changed,\n"
              "  replaced, planted, missing, unrecorded or unreadable object, or an open conflict,\n"
              "  2 configuration error, 3 archive endpoint unreachable",
    "conflicts": "exit codes: 0 no open conflict (list) or the resolution is recorded (resolve), 1 an open\n"
                 "  conflict (list), 2 usage or configuration error (an unknown or resolved id), 3 archive\n"
                 "  endpoint unreachable",
    "demo": "exit codes: 0 every demo statement archived, 1 a statement was not archived,\n"
            "  2 the folder is not the demo's (or another usage error)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ibreports",
        description="Interactive Brokers statements, off IBKR's servers and into storage you own.",
    )
    parser.add_argument("--version", action="version", version=f"ibreports {__version__}")
    parser.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        import_module(f"{__name__}.{name}").register(sub)
    _accept_global_flags_anywhere(sub)
    _describe(sub)
    return parser


def _accept_global_flags_anywhere(sub: argparse._SubParsersAction) -> None:
    """`ibreports fetch --config X` works like `ibreports --config X fetch`, and each --help shows both."""
    for command in sub.choices.values():
        command.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH", help=CONFIG_HELP)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_global_flags_anywhere(action)


def _describe(sub: argparse._SubParsersAction, exit_codes: str | None = None) -> None:
    """Every command's --help opens with what it does (its one-line help) and ends with its exit codes."""
    helps = {action.dest: action.help for action in sub._choices_actions}
    for name, command in sub.choices.items():
        codes = exit_codes or EXIT_CODES.get(name, GENERIC_EXIT_CODES)
        if not command.description and helps.get(name):
            text = helps[name]
            command.description = text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
        if not command.epilog:
            command.epilog = codes
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _describe(action, codes)


def main(argv: list[str] | None = None, flow_runner: FlowRunner | None = None) -> int:
    """Run one command; ``flow_runner`` is what ``demo`` runs the flow with (None: flows.demo.run_flow)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help/--version exit 0
        return int(exc.code or 0)
    args.flow_runner = flow_runner
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "gnupg", "httpx", "apprise"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # paramiko logs tracebacks at ERROR for failures we report ourselves, with a remedy.
    logging.getLogger("paramiko").setLevel(logging.WARNING if args.debug else logging.CRITICAL)
    # Our own level even where logging was configured before (basicConfig then does nothing).
    logging.getLogger("ibreports").setLevel(logging.DEBUG if args.debug else logging.INFO)
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
    """The installed ``ibreports`` command (and ``python -m ibreports.cli``)."""
    sys.exit(main())
