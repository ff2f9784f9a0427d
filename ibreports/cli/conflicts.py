"""`ibreports conflicts list` and `ibreports conflicts resolve`: the durable conflicts a person settles."""

from __future__ import annotations

import argparse
import json

from ..config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("conflicts", help="deliveries that contradict the archive: list them, resolve them")
    cmds = p.add_subparsers(dest="conflicts_command", metavar="ACTION", required=True)
    q = cmds.add_parser("list", help="open conflicts (with --all also the resolved ones)")
    q.add_argument("--all", action="store_true", dest="everything", help="also resolved conflicts, with their resolution")
    q.add_argument("--json", action="store_true", help="machine-readable output (schema in docs/coverage.md)")
    q.set_defaults(handler=list_command)
    q = cmds.add_parser("resolve", help="record which copy is right; both copies stay in the archive")
    q.add_argument("id", metavar="ID", help="the conflict's id, as `conflicts list` shows it")
    q.add_argument("--keep", required=True, choices=("archived", "new"),
                   help="archived: the archived object stays the statement; new: the quarantined delivery is right")
    q.add_argument("--reason", required=True, help="why (kept in the resolution record)")
    q.set_defaults(handler=resolve_command)


def _archive(args: argparse.Namespace):
    from ..archive import open_archive

    return open_archive(load_config(args.config).archive)


def list_command(args: argparse.Namespace) -> int:
    from ..conflicts import list_conflicts

    found = list_conflicts(_archive(args), everything=args.everything)
    if args.json:
        print(json.dumps({"conflicts": [c.to_dict() for c in found]}, indent=1, sort_keys=True))
    else:
        print(format_conflicts(found))
    return 1 if any(c.open for c in found) else 0


def format_conflicts(found) -> str:
    lines = []
    for c in found:
        d = c.data
        state = "OPEN" if c.open else f"resolved: keep {(c.resolution or {}).get('keep', '?')}"
        lines.append(f"{state}  {c.id}")
        lines.append(f"    {d.get('source')}/{d.get('remote_name')} (statement date {d.get('statement_date')}), "
                     f"detected {d.get('detected')} by run {d.get('run_id')}")
        lines.append(f"    archived {d.get('key')}  sha256 {d.get('archived_sha256')}")
        for key, sha in (d.get("kept") or {}).items():
            lines.append(f"    kept     {key}  sha256 {sha}")
        if c.resolution:
            r = c.resolution
            lines.append(f"    {r.get('resolved')} by {r.get('by')}: {r.get('reason')} (statement: {r.get('authoritative')})")
    opened = sum(c.open for c in found)
    lines.append(f"{opened} open conflict(s)" + (f", {len(found) - opened} resolved" if len(found) > opened else "")
                 + (": compare both copies (ask IBKR if unsure), then `ibreports conflicts resolve ID --keep "
                    "archived|new --reason TEXT`." if opened else "."))
    return "\n".join(lines)


def resolve_command(args: argparse.Namespace) -> int:
    from ..conflicts import resolve

    resolution = resolve(_archive(args), args.id, args.keep, args.reason)
    print(f"resolved {resolution['conflict']}: keep {resolution['keep']}; the statement is "
          f"{resolution['authoritative']}; nothing was moved or deleted (both copies stay in the archive).")
    return 0
