"""What coverage reads: the archive's listings, the servers' listings, the newest run records.

``collect_coverage`` is the one way in for the command and the daily flow; ``open_conflicts`` is
the one place coverage's open conflicts come from (the durable records of conflicts.py).
"""

from __future__ import annotations

from datetime import date
from typing import Iterable

from .config import Config
from .coverage import CoverageReport, Mark, Refusals, archived_conflicts, compute, remote_ranges


def list_sources(config: Config, names: list[str] | None = None) -> tuple[list[tuple[str, str, float]], dict[str, str]]:
    """Every file on the selected sources (source, name, mtime; one listing each), and per source "ok" or the error."""
    from .errors import IbreportsError
    from .remote import open_remote
    from .remote.registry import kind_of

    files: list[tuple[str, str, float]] = []
    state: dict[str, str] = {}
    for source in config.select(names):
        if not kind_of(source).capabilities.listing:  # on-demand (Flex Web Service): nothing to list
            state[source.name] = "not checked: an on-demand source has no listing"
            continue
        try:
            with open_remote(source) as remote:
                files += [(source.name, rf.name, rf.mtime) for rf in remote.list()]
        except IbreportsError as exc:
            state[source.name] = f"could not be listed: {exc}"
            continue
        state[source.name] = "ok"
    return files, state


def open_conflicts(archive, inventory: Iterable[str] | None = None) -> dict[tuple[str, str], list[Mark]]:
    """The open conflicts per (account, query), for coverage and its calendar: the deliveries kept
    apart under ``conflicts/`` whose conflict record has no resolution yet (conflicts.open_records;
    from ``inventory`` when the caller listed the archive already)."""
    from .conflicts import RECORD, open_records

    keys = inventory if inventory is not None else archive.inventory("conflicts/").keys()
    return archived_conflicts(record[: -len(RECORD)] for record in open_records(keys))


def last_refusals(archive, sources: list[str], inventory: Iterable[str] | None = None) -> Refusals:
    """"source/name" -> (code, reason) of the files the latest run of each source failed or rejected
    (the newest run records only: status.last_unfinished)."""
    from .status import last_unfinished

    runs = {k: None for k in (inventory if inventory is not None else archive.inventory("runs/").keys())
            if k.startswith("runs/")}
    rows = last_unfinished(archive, runs, sources) if sources and runs else {}
    return refusals_of(rows.values())


def refusals_of(rows: Iterable) -> Refusals:
    """Refusals from run-record rows or FileOutcomes: failed or rejected, with their code and reason."""
    found: Refusals = {}
    for row in rows:
        get = row.get if isinstance(row, dict) else lambda k, o=row: getattr(o, k, None)
        if get("outcome") in ("failed", "rejected"):
            found[f"{get('source')}/{get('name')}"] = (str(get("code") or "failed"), str(get("reason") or "")[:500])
    return found


def collect_coverage(config: Config, accounts: list[str] | None = None, since: date | None = None,
                     until: date | None = None, servers: bool = True, keys: Iterable[str] | None = None,
                     listing: tuple[list[tuple], dict[str, str]] | None = None,
                     refusals: Refusals | None = None) -> CoverageReport:
    """The coverage report: one archive listing of ``statements/`` and of ``conflicts/`` (unless ``keys``,
    a listing of the whole archive, are given), one listing per source (unless ``listing``, the
    (source, name, mtime) rows and per-source states a run already has, is given), and the newest run
    records of the sources that were listed (unless ``refusals`` are given)."""
    from .archive import open_archive

    archive = open_archive(config.archive)
    if keys is None:
        keys = list(archive.inventory("statements/").keys())
        conflicts = open_conflicts(archive)
        runs = None
    else:
        keys = list(keys)
        conflicts = open_conflicts(archive, keys)
        runs = [k for k in keys if k.startswith("runs/")]
    if listing is None:
        listing = list_sources(config) if servers else ([], {s.name: "not checked" for s in config.sources})
    files, state = listing
    if refusals is None:
        listed = [s for s, v in state.items() if v == "ok"]
        refusals = last_refusals(archive, listed, runs) if listed else {}
    ret = config.retention
    return compute(keys, remote_ranges(files, ret.purge_days), state, config.coverage.calendar,
                   config.coverage.grace_days, accounts, since, until, refusals=refusals, conflicts=conflicts,
                   warn_days=ret.warn_days)
