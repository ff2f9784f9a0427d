"""Coverage: which statements the archive holds per account and kind, and which are missing.

One listing of the archive (``statements/<account>/<YYYY>/<MM>/<name>``, statements.py) and
one listing per source; no request per object. Each (account, query) is one kind, with a
cadence read from its names:

- ``daily``: every statement covers one day; a gap is a business day (weekdays minus the
  ``[coverage] calendar`` exchange's holidays) without one, up to today;
- ``monthly``: every statement covers one calendar month; a gap is a month without one;
- ``ranges``: anything else (weekly, custom periods); a gap is a business day between the first
  and the last statement that no statement covers (nothing is assumed after the last one);
- ``single``: one period so far: no cadence to check yet, so no gaps.

A day or month is a gap only once it is more than ``grace_days`` old (its statement may still
be on its way). Each gap is checked against the servers' listings: still there ("on-server":
run ``ibreports fetch``) or not ("purged": ask IBKR to regenerate it, or backfill it through
the Flex Web Service); "unknown" when a source could not be listed.

JSON (``ibreports coverage --json``), stable::

    {"generated": "2026-11-22T06:30:00+00:00", "calendar": "NYSE", "grace_days": 3,
     "since": "YYYY-MM-DD" | null, "until": "YYYY-MM-DD" | null,
     "kinds": [{"account": str, "query": str, "cadence": "daily" | "monthly" | "ranges" | "single",
                "first": "YYYY-MM-DD", "last": "YYYY-MM-DD", "count": int,
                "gaps": [{"from": "YYYY-MM-DD", "to": "YYYY-MM-DD", "business_days": int,
                          "status": "on-server" | "purged" | "unknown", "files": ["source/name"]}]}],
     "unsorted": int, "sources": {source: "ok" | "cause and remedy"}, "gaps": int}

``kinds`` is sorted by account then query; ``gaps`` of a kind by date. ``unsorted`` counts
archived statements whose names carry no account and period (never checked for gaps).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Iterable

from . import statements
from .calendars import BusinessDays
from .config import Config

STATUS_TEXT = {
    "on-server": "on the server, not archived: run `ibreports fetch`",
    "purged": "purged: ask IBKR to regenerate it (or use a Flex Web Service backfill)",
    "unknown": "unknown: not on the servers that were listed, and a source was not (see below)",
    "unchecked": "not checked against the servers",
}
RemoteRange = tuple[date, date, str]  # period start, end, "source/name"


@dataclass
class Gap:
    start: date
    end: date
    business_days: int
    status: str  # "on-server" | "purged" | "unknown"
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"from": self.start.isoformat(), "to": self.end.isoformat(), "business_days": self.business_days,
                "status": self.status, "files": list(self.files)}


@dataclass
class Kind:
    account: str
    query: str
    cadence: str
    first: date
    last: date
    count: int
    gaps: list[Gap] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"account": self.account, "query": self.query, "cadence": self.cadence,
                "first": self.first.isoformat(), "last": self.last.isoformat(), "count": self.count,
                "gaps": [g.to_dict() for g in self.gaps]}


@dataclass
class CoverageReport:
    generated: str
    calendar: str
    grace_days: int
    since: date | None = None
    until: date | None = None
    kinds: list[Kind] = field(default_factory=list)
    unsorted: int = 0
    sources: dict[str, str] = field(default_factory=dict)  # source -> "ok" or why it was not listed

    @property
    def gaps(self) -> list[tuple[Kind, Gap]]:
        return [(k, g) for k in self.kinds for g in k.gaps]

    @property
    def exit_code(self) -> int:
        """1 when a gap (older than the grace period, by construction) exists, else 0."""
        return 1 if self.gaps else 0

    def to_dict(self) -> dict:
        """The documented JSON document (module docstring)."""
        return {"generated": self.generated, "calendar": self.calendar, "grace_days": self.grace_days,
                "since": self.since.isoformat() if self.since else None,
                "until": self.until.isoformat() if self.until else None,
                "kinds": [k.to_dict() for k in self.kinds], "unsorted": self.unsorted,
                "sources": dict(self.sources), "gaps": len(self.gaps)}


@dataclass(frozen=True)
class _Held:
    start: date
    end: date


def archived_statements(keys: Iterable[str]) -> tuple[dict[tuple[str, str], list[_Held]], int]:
    """Statements per (account, query) from archive keys, and the count of unsorted ones."""
    kinds: dict[tuple[str, str], list[_Held]] = {}
    unsorted = 0
    for key in keys:
        if not key.startswith("statements/"):
            continue
        st = statements.parse(key.rsplit("/", 1)[-1], 0)
        if not st.parsed or not st.account or key.startswith(f"statements/{statements.UNSORTED}/"):
            unsorted += 1
            continue
        kinds.setdefault((st.account, st.query or ""), []).append(_Held(st.period_start, st.period_end))
    return kinds, unsorted


def remote_ranges(files: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[RemoteRange]]:
    """(source, remote name) pairs as periods per (account, query); names we cannot parse are left out."""
    found: dict[tuple[str, str], list[RemoteRange]] = {}
    for source, name in files:
        if not name or not name.isprintable():
            continue
        st = statements.parse(name, 0)
        if st.parsed and st.account:
            found.setdefault((st.account, st.query or ""), []).append((st.period_start, st.period_end, f"{source}/{name}"))
    return found


def _month_end(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)


def cadence(held: list[_Held]) -> str:
    if len({(h.start, h.end) for h in held}) < 2:
        return "single"  # one period says nothing about how often the next ones come
    if all(h.start == h.end for h in held):
        return "daily"
    if all(h.start.day == 1 and h.end == _month_end(h.start) for h in held):
        return "monthly"
    return "ranges"


def compute(
    keys: Iterable[str],
    remote: dict[tuple[str, str], list[RemoteRange]],
    sources: dict[str, str],
    calendar: str = "NYSE",
    grace_days: int = 3,
    accounts: list[str] | None = None,
    since: date | None = None,
    until: date | None = None,
    today: date | None = None,
) -> CoverageReport:
    """The coverage report from archive keys and the servers' listings (pure: no I/O)."""
    today = today or datetime.now(timezone.utc).date()
    days = BusinessDays(calendar)
    report = CoverageReport(generated=datetime.now(timezone.utc).isoformat(timespec="seconds"), calendar=calendar,
                            grace_days=grace_days, since=since, until=until, sources=dict(sources))
    kinds, report.unsorted = archived_statements(keys)
    listed = bool(sources) and all(v == "ok" for v in sources.values())
    for (account, query), held in sorted(kinds.items()):
        if accounts and account not in accounts:
            continue
        first_ever = min(h.start for h in held)  # days after it and after --since are expected
        every = cadence(held)  # from every statement of the kind, whatever the range
        held = [h for h in held if not (since and h.end < since) and not (until and h.start > until)]
        if not held:
            continue
        kind = Kind(account, query, every, min(h.start for h in held), max(h.end for h in held), len(held))
        # The newest day that can be a gap: older than the grace period, within --until.
        horizon = min(today - timedelta(days=grace_days + 1), until or today)
        lo = max(first_ever, since) if since else first_ever
        if kind.cadence == "single":
            units = []
        elif kind.cadence == "monthly":
            units = _missing_months(held, lo, horizon)
        else:
            hi = horizon if kind.cadence == "daily" else min(kind.last, horizon)
            covered = {h.start + timedelta(days=i) for h in held for i in range((h.end - h.start).days + 1)}
            units = [(d, d) for d in days.between(lo, hi) if d not in covered]
        kind.gaps = _merge(units, remote.get((account, query), []), listed, days)
        report.kinds.append(kind)
    return report


def _missing_months(held: list[_Held], lo: date, horizon: date) -> list[tuple[date, date]]:
    have = {(h.start.year, h.start.month) for h in held}
    units, month = [], lo.replace(day=1)
    while _month_end(month) <= horizon:
        if (month.year, month.month) not in have:
            units.append((month, _month_end(month)))
        month = _month_end(month) + timedelta(days=1)
    return units


def _merge(units: list[tuple[date, date]], remote: list[RemoteRange], listed: bool, days: BusinessDays) -> list[Gap]:
    """One gap per run of adjacent missing units with the same status."""
    gaps: list[Gap] = []
    previous_end: date | None = None
    for start, end in units:
        files = sorted(label for r_start, r_end, label in remote if r_start <= end and r_end >= start)
        status = "on-server" if files else "purged" if listed else "unknown"
        adjacent = previous_end is not None and days.count(previous_end + timedelta(days=1), start - timedelta(days=1)) == 0
        if gaps and adjacent and gaps[-1].status == status:
            gap = gaps[-1]
            gap.end = end
            gap.files += [f for f in files if f not in gap.files]
        else:
            gaps.append(Gap(start, end, 0, status, files))
        gaps[-1].business_days += days.count(start, end)
        previous_end = end
    return gaps


def list_sources(config: Config, names: list[str] | None = None) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Every file name on the selected sources (one listing each), and per source "ok" or the error."""
    from .errors import IbreportsError
    from .remote import open_remote

    files: list[tuple[str, str]] = []
    state: dict[str, str] = {}
    from .remote.registry import kind_of

    for source in config.select(names):
        if not kind_of(source).capabilities.listing:  # on-demand (Flex Web Service): nothing to list
            state[source.name] = "not checked: an on-demand source has no listing"
            continue
        try:
            with open_remote(source) as remote:
                files += [(source.name, rf.name) for rf in remote.list()]
        except IbreportsError as exc:
            state[source.name] = f"could not be listed: {exc}"
            continue
        state[source.name] = "ok"
    return files, state


def collect_coverage(config: Config, accounts: list[str] | None = None, since: date | None = None,
                     until: date | None = None, servers: bool = True, keys: Iterable[str] | None = None,
                     listing: tuple[list[tuple[str, str]], dict[str, str]] | None = None) -> CoverageReport:
    """The coverage report: one archive listing (unless ``keys`` are given), one listing per source
    (unless ``listing``, the (source, name) pairs and per-source states a run already has, is given)."""
    from .archive import open_archive

    if keys is None:
        keys = open_archive(config.archive).inventory("statements/").keys()
    if listing is None:
        listing = list_sources(config) if servers else ([], {s.name: "not checked" for s in config.sources})
    files, state = listing
    return compute(keys, remote_ranges(files), state, config.coverage.calendar, config.coverage.grace_days,
                   accounts, since, until)


def new_gaps(report: CoverageReport, previous_run: float | None) -> list[tuple[Kind, Gap]]:
    """Gaps whose newest day passed the grace period after ``previous_run`` (all of them without one)."""
    if previous_run is None:
        return report.gaps
    before = datetime.fromtimestamp(previous_run, timezone.utc).date()
    return [(k, g) for k, g in report.gaps if g.end + timedelta(days=report.grace_days + 1) > before]


def previous_run(run_keys: Iterable[str], before: float | None = None) -> float | None:
    """Start time of the newest run record (``runs/YYYY/MM/<YYYYmmddTHHMMSSZ>-x.json``) before ``before``."""
    before = time.time() if before is None else before
    best = None
    for key in run_keys:
        try:
            started = datetime.strptime(key.rsplit("/", 1)[-1][:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            continue
        stamp = started.timestamp()
        if stamp < before and (best is None or stamp > best):
            best = stamp
    return best

