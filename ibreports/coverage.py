"""Coverage: which statements the archive holds per account and kind, and which are missing.

One listing of the archive (``statements/<account>/<YYYY>/<MM>/<name>``, statements.py, plus
``conflicts/`` and, when the servers are listed, ``runs/``) and one listing per source; the
newest run records are the only objects read. Each (account, query) is one kind, with the
cadence most of its statements have (each statement's own shape: one day, one calendar month,
or another period):

- ``daily``: most statements cover one day; a gap is a business day (weekdays minus the
  ``[coverage] calendar`` exchange's holidays) that no statement covers, up to today;
- ``monthly``: most statements cover one calendar month; a gap is a month without one;
- ``ranges``: most are other periods (weekly, custom); a gap is a business day between the first
  and the last statement that no statement covers (nothing is assumed after the last one);
- ``single``: one statement of another period: nothing to check yet, so no gaps.

A statement of another shape than its kind's cadence (a multi-day statement in a daily kind) is
reported under ``odd``; the days it covers count as held, and it never changes how the gaps of
the rest are found. A day or month is a gap only once it is more than ``grace_days`` old (its
statement may still be on its way). Each gap is checked against the servers' listings and the
newest run records: still there ("on-server": run ``ibreports fetch``), there but refused by the
last run ("refused": the recorded reason and its remedy), or not ("purged": ask IBKR to
regenerate it, or backfill it through the Flex Web Service); "unknown" when a source could not
be listed.

JSON (``ibreports coverage --json``), stable::

    {"generated": "2026-11-22T06:30:00+00:00", "calendar": "NYSE", "grace_days": 3,
     "since": "YYYY-MM-DD" | null, "until": "YYYY-MM-DD" | null,
     "kinds": [{"account": str, "query": str, "cadence": "daily" | "monthly" | "ranges" | "single",
                "first": "YYYY-MM-DD", "last": "YYYY-MM-DD", "count": int,
                "gaps": [{"from": "YYYY-MM-DD", "to": "YYYY-MM-DD", "business_days": int,
                          "status": "on-server" | "refused" | "purged" | "unknown", "files": ["source/name"],
                          "days_left": int | null, "refused": {"source/name": {"code": str, "reason": str}}}],
                "odd": [{"from": "YYYY-MM-DD", "to": "YYYY-MM-DD", "name": str}],
                "conflicts": [{"from": "YYYY-MM-DD", "to": "YYYY-MM-DD", "key": str}]}],
     "unsorted": int, "sources": {source: "ok" | "cause and remedy"}, "gaps": int}

``kinds`` is sorted by account then query; ``gaps`` of a kind by date. ``unsorted`` counts
archived statements whose names carry no account and period (never checked for gaps).
``days_left``: the fewest days any server copy of the gap has before the purge (null: none).
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Iterable

from . import statements
from .calendars import BusinessDays

STATUS_TEXT = {
    "on-server": "on the server, not archived: run `ibreports fetch`",
    "refused": "on the server, refused by the last run (a new fetch refuses it again)",
    "purged": "purged: ask IBKR to regenerate it (or use a Flex Web Service backfill)",
    "unknown": "unknown: not on the servers that were listed, and a source was not (see below)",
    "unchecked": "not checked against the servers",
}
MAX_GRACE_DAYS = 36500  # a larger [coverage] grace_days means the same: nothing is a gap yet
RemoteRange = tuple[date, date, str, "int | None"]  # period start, end, "source/name", days left before the purge
Refusals = dict[str, tuple[str, str]]  # "source/name" -> (code, reason) of the last run that refused it


@dataclass
class Gap:
    start: date
    end: date
    business_days: int
    status: str  # "on-server" | "refused" | "purged" | "unknown"
    files: list[str] = field(default_factory=list)
    days_left: int | None = None  # the fewest days a server copy has before the purge
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)  # "source/name" -> (code, reason)
    units: list[tuple[date, date, int | None]] = field(default_factory=list, repr=False)  # per day/month: days left

    def to_dict(self) -> dict:
        return {"from": self.start.isoformat(), "to": self.end.isoformat(), "business_days": self.business_days,
                "status": self.status, "files": list(self.files), "days_left": self.days_left,
                "refused": {f: {"code": c, "reason": r} for f, (c, r) in self.refused.items()}}


@dataclass(frozen=True)
class Mark:
    """A period of a kind with something to say about it: an odd statement, or an open conflict."""

    start: date
    end: date
    label: str  # the statement's name (odd) or the conflict's archive key

    def to_dict(self, what: str) -> dict:
        return {"from": self.start.isoformat(), "to": self.end.isoformat(), what: self.label}


@dataclass
class Kind:
    account: str
    query: str
    cadence: str
    first: date
    last: date
    count: int
    gaps: list[Gap] = field(default_factory=list)
    odd: list[Mark] = field(default_factory=list)  # statements of another shape than the cadence
    conflicts: list[Mark] = field(default_factory=list)
    held: list[tuple[date, date]] = field(default_factory=list, repr=False)  # merged covered periods (not in JSON)
    horizon: date | None = None  # the newest day that can be a gap

    def to_dict(self) -> dict:
        return {"account": self.account, "query": self.query, "cadence": self.cadence,
                "first": self.first.isoformat(), "last": self.last.isoformat(), "count": self.count,
                "gaps": [g.to_dict() for g in self.gaps], "odd": [m.to_dict("name") for m in self.odd],
                "conflicts": [m.to_dict("key") for m in self.conflicts]}


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
    warn_days: int = 14  # a gap whose server copy is this close to the purge is at risk
    today: date | None = None  # the day the report was made for (not in JSON)

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
    name: str = ""


def archived_statements(keys: Iterable[str]) -> tuple[dict[tuple[str, str], list[_Held]], int]:
    """Statements per (account, query) from archive keys, and the count of unsorted ones."""
    kinds: dict[tuple[str, str], list[_Held]] = {}
    unsorted = 0
    for key in keys:
        if not key.startswith("statements/"):
            continue
        name = key.rsplit("/", 1)[-1]
        st = statements.parse(name, 0)
        if not st.parsed or not st.account or key.startswith(f"statements/{statements.UNSORTED}/"):
            unsorted += 1
            continue
        kinds.setdefault((st.account, st.query or ""), []).append(_Held(st.period_start, st.period_end, name))
    return kinds, unsorted


def archived_conflicts(keys: Iterable[str]) -> dict[tuple[str, str], list[Mark]]:
    """Open conflicts per (account, query), as the archive marks them today: a delivery kept aside at
    ``conflicts/<source>/<YYYY>/<MM>/<name>.<sha256 prefix>`` (plan.conflict_key)."""
    found: dict[tuple[str, str], list[Mark]] = {}
    for key in keys:
        if not key.startswith("conflicts/"):
            continue
        name = key.rsplit("/", 1)[-1].rpartition(".")[0]
        st = statements.parse(name, 0) if name and name.isprintable() else None
        if st is not None and st.parsed and st.account:
            found.setdefault((st.account, st.query or ""), []).append(Mark(st.period_start, st.period_end, key))
    return found


def remote_ranges(files: Iterable[tuple], purge_days: int | None = None,
                  now: float | None = None) -> dict[tuple[str, str], list[RemoteRange]]:
    """(source, remote name[, mtime]) as periods per (account, query); names we cannot parse are left out.
    With an mtime and ``purge_days``, each carries the days left before the server purges it."""
    now = time.time() if now is None else now
    found: dict[tuple[str, str], list[RemoteRange]] = {}
    for source, name, *rest in files:
        if not isinstance(name, str) or not name or not name.isprintable():
            continue
        st = statements.parse(name, 0)
        if st.parsed and st.account:
            left = None
            if rest and purge_days is not None and isinstance(rest[0], (int, float)):
                left = statements.days_left(rest[0], purge_days, now)
            found.setdefault((st.account, st.query or ""), []).append((st.period_start, st.period_end,
                                                                        f"{source}/{name}", left))
    return found


def month_end(day: date) -> date:
    if day.month == 12:
        return day.replace(day=31)
    return day.replace(month=day.month + 1, day=1) - timedelta(days=1)


def _shape(start: date, end: date) -> str:
    if start == end:
        return "daily"
    if start.day == 1 and end == month_end(start):
        return "monthly"
    return "ranges"


def cadence(held: list[_Held]) -> str:
    """The shape most of the kind's periods have (one day, one calendar month, other); ties go to
    daily, then monthly. One period of another shape: ``single``."""
    counts = Counter(_shape(s, e) for s, e in {(h.start, h.end) for h in held})
    best = max(("daily", "monthly", "ranges"), key=lambda c: counts[c])  # max keeps the first of equals
    if best == "ranges" and sum(counts.values()) < 2:
        return "single"  # one period says nothing about how often the next ones come
    return best


def _merged(periods: Iterable[tuple[date, date]]) -> list[tuple[date, date]]:
    out: list[tuple[date, date]] = []
    for start, end in sorted(periods):
        if out and start <= out[-1][1] + timedelta(days=1):
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def covers(merged: list[tuple[date, date]], start: date, end: date) -> bool:
    """Whether one merged period holds every day from ``start`` to ``end``."""
    i = bisect.bisect_right(merged, (start, date.max)) - 1
    return i >= 0 and merged[i][0] <= start and merged[i][1] >= end


class Days:
    """Business days, computed once per report (the widest span asked for) and sliced per kind."""

    def __init__(self, days: BusinessDays) -> None:
        self.calendar, self.lo, self.hi, self.list = days, None, None, []

    def count(self, lo: date, hi: date) -> int:
        return len(self.between(lo, hi))

    def is_business_day(self, day: date) -> bool:
        return self.calendar.is_business_day(day)

    def between(self, lo: date, hi: date) -> list[date]:
        if lo > hi:
            return []
        if self.lo is None or lo < self.lo or hi > self.hi:
            self.lo, self.hi = min(lo, self.lo or lo), max(hi, self.hi or hi)
            self.list = self.calendar.between(self.lo, self.hi)
        return self.list[bisect.bisect_left(self.list, lo):bisect.bisect_right(self.list, hi)]


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
    refusals: Refusals | None = None,
    conflicts: dict[tuple[str, str], list[Mark]] | None = None,
    warn_days: int = 14,
) -> CoverageReport:
    """The coverage report from archive keys and the servers' listings (pure: no I/O).

    ``refusals``: server files the last run refused (their gaps are "refused", with the reason);
    ``conflicts``: open conflicts per kind (default: the ``conflicts/`` keys among ``keys``)."""
    keys = list(keys)
    today = today or datetime.now(timezone.utc).date()
    days = Days(BusinessDays(calendar))
    report = CoverageReport(generated=datetime.now(timezone.utc).isoformat(timespec="seconds"), calendar=calendar,
                            grace_days=grace_days, since=since, until=until, sources=dict(sources), warn_days=warn_days,
                            today=today)
    kinds, report.unsorted = archived_statements(keys)
    conflicts = archived_conflicts(keys) if conflicts is None else conflicts
    listed = bool(sources) and all(v == "ok" for v in sources.values())
    # The newest day that can be a gap: older than the grace period, within --until.
    horizon = min(today - timedelta(days=min(max(grace_days, 0), MAX_GRACE_DAYS) + 1), until or today)
    for (account, query), held in sorted(kinds.items()):
        if accounts and account not in accounts:
            continue
        first_ever = min(h.start for h in held)  # days after it and after --since are expected
        every = cadence(held)  # from every statement of the kind, whatever the range
        held = [h for h in held if not (since and h.end < since) and not (until and h.start > until)]
        if not held:
            continue
        kind = Kind(account, query, every, min(h.start for h in held), max(h.end for h in held), len(held),
                    horizon=horizon)
        if every in ("daily", "monthly"):
            kind.odd = sorted(Mark(h.start, h.end, h.name) for h in held if _shape(h.start, h.end) != every)
        kind.conflicts = sorted(m for m in conflicts.get((account, query), [])
                                if not (since and m.end < since) and not (until and m.start > until))
        kind.held = _merged((h.start, h.end) for h in held)
        lo = max(first_ever, since) if since else first_ever
        if every == "single":
            units = []
        elif every == "monthly":
            units = _missing_months(held, kind.held, lo, horizon)
        else:
            hi = horizon if every == "daily" else min(kind.last, horizon)
            units = [(d, d) for d in days.between(lo, hi) if not covers(kind.held, d, d)]
        kind.gaps = _merge(units, remote.get((account, query), []), listed, days, refusals or {})
        report.kinds.append(kind)
    return report


def _missing_months(held: list[_Held], merged: list[tuple[date, date]], lo: date, horizon: date) -> list[tuple[date, date]]:
    have = {(h.start.year, h.start.month) for h in held if _shape(h.start, h.end) == "monthly"}
    units, month = [], lo.replace(day=1)
    while month_end(month) <= horizon:
        end = month_end(month)
        if (month.year, month.month) not in have and not covers(merged, month, end):
            units.append((month, end))
        month = end + timedelta(days=1)
    return units


def _merge(units: list[tuple[date, date]], remote: list[RemoteRange], listed: bool, days: "Days",
           refusals: Refusals) -> list[Gap]:
    """One gap per run of adjacent missing units with the same status."""
    gaps: list[Gap] = []
    previous_end: date | None = None
    for start, end in units:
        copies = [(label, left) for r_start, r_end, label, left in remote if r_start <= end and r_end >= start]
        files = sorted(label for label, _ in copies)
        refused = {f: refusals[f] for f in files if f in refusals}
        status = ("refused" if files and len(refused) == len(files) else "on-server") if files \
            else "purged" if listed else "unknown"
        lefts = [left for _, left in copies if left is not None]
        adjacent = previous_end is not None and days.count(previous_end + timedelta(days=1), start - timedelta(days=1)) == 0
        if gaps and adjacent and gaps[-1].status == status:
            gap = gaps[-1]
            gap.end = end
            gap.files += [f for f in files if f not in gap.files]
            gap.refused.update(refused)
        else:
            gap = Gap(start, end, 0, status, files, refused=refused)
            gaps.append(gap)
        gap.units.append((start, end, min(lefts) if lefts else None))
        if lefts:
            gap.days_left = min(lefts + ([gap.days_left] if gap.days_left is not None else []))
        gap.business_days += days.count(start, end)
        previous_end = end
    return gaps


def new_gaps(report: CoverageReport, previous_run: float | None) -> list[tuple[Kind, Gap]]:
    """Gaps whose newest day passed the grace period after ``previous_run`` (all of them without one)."""
    if previous_run is None:
        return report.gaps
    before = datetime.fromtimestamp(previous_run, timezone.utc).date()
    grace = min(max(report.grace_days, 0), MAX_GRACE_DAYS)
    return [(k, g) for k, g in report.gaps if g.end + timedelta(days=grace + 1) > before]


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


def gap_line(kind: Kind, gap: Gap) -> str:
    span = str(gap.start) if gap.start == gap.end else f"{gap.start}..{gap.end}"
    return f"{kind.account} {kind.query}: {span} ({gap.business_days} business day(s)) {gap_status(gap)}"


def gap_status(gap: Gap, attempted: bool = True) -> str:
    """The gap's state for people; a refused one names the refusal and its remedy (the run's reason)."""
    text = STATUS_TEXT["unchecked" if gap.status == "unknown" and not attempted else gap.status]
    if gap.days_left is not None:
        text += f" ({gap.days_left} day(s) before the server purges it)" if gap.days_left >= 0 else " (due for the purge)"
    if gap.refused:
        name, (code, reason) = next(iter(sorted(gap.refused.items())))
        more = f" (and {len(gap.refused) - 1} more)" if len(gap.refused) > 1 else ""
        text += f": {code}: {name.split('/', 1)[-1]}: {reason or 'no reason recorded'}{more}"
    return text


def kind_marks(kind: Kind) -> list[str]:
    """An odd statement (another period than the kind's cadence) and open conflicts, one line each."""
    lines = [f"odd: {m.start}..{m.end} {m.label}: not a {kind.cadence} statement (its days count as held)"
             for m in kind.odd[:20]]
    if len(kind.odd) > 20:
        lines.append(f"odd: ... and {len(kind.odd) - 20} more")
    lines += [f"conflict: {m.start}..{m.end} {m.label}: another delivery differs from the archived statement "
              "(open until resolved: `ibreports conflicts list`)" for m in kind.conflicts[:20]]
    return lines
