"""The coverage calendar: per account and kind, one cell per day (a month for monthly kinds).

States (``STATES``): ``held`` (a statement covers it), ``missing`` (a gap), ``at-risk`` (a gap whose
file is still on the server, not archived, within ``[retention] warn_days`` of the purge),
``conflict`` (an open conflict: another delivery differs from the archived statement),
``pending`` (younger than the grace period), ``closed`` (not a business day) and ``none``
(before the first statement, after today, or after the last statement of a ``ranges`` kind).

``html(report)`` is one self-contained page (inline CSS, no script, nothing fetched);
``calendar_markdown(report)`` is the same calendar as text for the daily run's Prefect artifact.
"""

from __future__ import annotations

from datetime import date, timedelta
from html import escape

from .calendars import BusinessDays
from .coverage import CoverageReport, Days, Kind, covers, gap_line, kind_marks, month_end

STATES = {
    "held": ("#2e7d32", "#", "held: a statement covers it"),
    "missing": ("#c62828", "x", "missing: a gap older than the grace period"),
    "at-risk": ("#ef6c00", "!", "at risk: on the server, not archived, close to the purge"),
    "conflict": ("#6a1b9a", "c", "conflict: another delivery differs from the archived statement"),
    "pending": ("#fbc02d", "~", "pending: younger than the grace period"),
    "closed": ("#e0e0e0", ".", "closed: not a business day"),
    "none": ("#ffffff", " ", "not expected"),
}
TITLES = {state: escape(text) for state, (_, _, text) in STATES.items()}
MAX_MONTHS = 24  # drawn per kind in the HTML page (the newest ones); --since draws earlier ones
MARKDOWN_MONTHS = 3
MARKDOWN_KINDS = 40


def _months(first: date, last: date, limit: int) -> list[date]:
    """First days of the months from ``first`` to ``last``, the newest ``limit`` of them."""
    months, month = [], first.replace(day=1)
    while month <= last:
        months.append(month)
        month = month_end(month) + timedelta(days=1)
    return months[-limit:]


def _end(report: CoverageReport, kind: Kind) -> date:
    today = report.today or kind.last
    return min(report.until, today) if report.until else today


def _start(report: CoverageReport, kind: Kind) -> date:
    return max(kind.first, report.since) if report.since else kind.first


def _days_of(periods, lo: date, hi: date) -> set[date]:
    """Every day of ``periods`` ((start, end) pairs) from ``lo`` to ``hi``."""
    found = set()
    for start, end in periods:
        day, stop = max(start, lo), min(end, hi)
        while day <= stop:
            found.add(day)
            day += timedelta(days=1)
    return found


def day_states(report: CoverageReport, kind: Kind, lo: date, hi: date, days: Days) -> dict[date, str]:
    """The state of each day from ``lo`` to ``hi`` of a daily, ranges or single kind."""
    start, end = _start(report, kind), _end(report, kind)
    missing = {day: left for gap in kind.gaps for day, last, left in gap.units if lo <= day <= hi}
    conflicts = _days_of(((m.start, m.end) for m in kind.conflicts), lo, hi)
    held = _days_of(kind.held, lo, hi)
    business = set(days.between(lo, hi))
    states, day = {}, lo
    while day <= hi:
        if day < start or day > end:
            state = "none"
        elif day in conflicts:
            state = "conflict"
        elif day in missing:
            left = missing[day]
            state = "at-risk" if left is not None and left <= report.warn_days else "missing"
        elif day in held:
            state = "held"
        elif day not in business:
            state = "closed"
        elif kind.horizon is not None and day > kind.horizon and kind.cadence != "ranges":
            state = "pending"
        else:
            state = "none"
        states[day] = state
        day += timedelta(days=1)
    return states


def month_state(report: CoverageReport, kind: Kind, month: date, gaps: dict) -> str:
    """The state of one month of a monthly kind (``gaps``: first day of a missing month -> days left, or None)."""
    end = month_end(month)
    if end < _start(report, kind) or month > _end(report, kind):
        return "none"
    if any(m.start <= end and m.end >= month for m in kind.conflicts):
        return "conflict"
    if month in gaps:
        left = gaps[month]
        return "at-risk" if left is not None and left <= report.warn_days else "missing"
    if covers(kind.held, month, end):
        return "held"
    return "pending" if kind.horizon is not None and end > kind.horizon else "none"


def grid(report: CoverageReport, kind: Kind, days: Days, limit: int) -> list[tuple[str, list[tuple[date | None, str]]]]:
    """Rows of (label, cells); a cell is (its date or None past a month's end, its state)."""
    start, end = _start(report, kind), max(_end(report, kind), _start(report, kind))
    if kind.cadence == "monthly":
        gaps = {start: left for gap in kind.gaps for start, _end, left in gap.units}  # month -> days left
        years = sorted({m.year for m in _months(start, end, limit)})
        return [(str(year), [(date(year, m, 1), month_state(report, kind, date(year, m, 1), gaps)) for m in range(1, 13)])
                for year in years]
    rows = []
    months = _months(start, end, limit)
    if not months:
        return rows
    states = day_states(report, kind, months[0], month_end(months[-1]), days)
    for month in months:
        last = month_end(month).day
        cells = [(month.replace(day=n), states[month.replace(day=n)]) if n <= last else (None, "blank")
                 for n in range(1, 32)]
        rows.append((f"{month:%Y-%m}", cells))
    return rows


CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#212121}
h1{font-size:1.4em}h2{font-size:1.1em;margin:1.4em 0 .4em}h2 small{font-weight:normal;color:#616161}
table.cal{border-collapse:separate;border-spacing:2px}table.cal th{font-weight:normal;color:#616161;font-size:11px;
padding:0 4px;text-align:right}table.cal td{width:18px;height:18px;font-size:10px;text-align:center;
border-radius:3px;color:#fff}td.blank{background:transparent}
ul.notes{margin:.3em 0;padding-left:1.2em;color:#424242}.legend span{display:inline-block;margin-right:1em}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;vertical-align:-1px;
border:1px solid #bdbdbd}
""" + "".join(f"td.{state}{{background:{color}}}" for state, (color, _, _) in STATES.items()) + \
    "td.none{border:1px solid #eee}td.closed,td.pending,td.none{color:#616161}"


def html(report: CoverageReport) -> str:
    """The calendar as one self-contained HTML page."""
    days = Days(BusinessDays(report.calendar))
    gaps = len(report.gaps)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>Statement coverage</title>", f"<style>{CSS}</style></head><body>",
           "<h1>Statement coverage</h1>",
           f"<p>Generated {escape(report.generated)}; {escape(report.calendar)} business days, grace "
           f"{report.grace_days} day(s); {len(report.kinds)} kind(s), "
           f"{sum(k.count for k in report.kinds)} statement(s), {gaps} gap(s).</p>",
           '<p class="legend">' + "".join(f'<span><i style="background:{c}"></i>{escape(t)}</span>'
                                          for c, _, t in STATES.values()) + "</p>"]
    for kind in report.kinds:
        out.append(f'<section class="kind" data-account="{escape(kind.account)}" data-query="{escape(kind.query)}" '
                   f'data-cadence="{kind.cadence}">')
        out.append(f"<h2>{escape(kind.account)} &middot; {escape(kind.query)} <small>{kind.cadence}, {kind.first}.."
                   f"{kind.last}, {kind.count} statement(s), {len(kind.gaps)} gap(s)</small></h2>")
        rows = grid(report, kind, days, MAX_MONTHS)
        heads = [f"{m:%b}" for m in (date(2000, n, 1) for n in range(1, 13))] if kind.cadence == "monthly" \
            else [str(n) for n in range(1, 32)]
        out.append('<table class="cal"><tr><th></th>' + "".join(f"<th>{h}</th>" for h in heads) + "</tr>")
        for label, cells in rows:
            tds = []
            for day, state in cells:
                if day is None:
                    tds.append('<td class="blank"></td>')
                    continue
                shown = f"{day:%Y-%m}" if kind.cadence == "monthly" else day.isoformat()
                tds.append(f'<td class="{state}" data-date="{shown}" data-state="{state}" '
                           f'title="{shown}: {TITLES[state]}">{STATES[state][1].strip()}</td>')
            out.append(f"<tr><th>{escape(label)}</th>{''.join(tds)}</tr>")
        out.append("</table>")
        notes = _notes(kind)
        if notes:
            out.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
        out.append("</section>")
    if not report.kinds:
        out.append("<p>No statements in the archive for this selection.</p>")
    for source, state in sorted(report.sources.items()):
        if state != "ok":
            out.append(f"<p>Source {escape(source)}: {escape(state)}</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _notes(kind: Kind) -> list[str]:
    return [gap_line(kind, g) for g in kind.gaps[:50]] + kind_marks(kind)


def calendar_markdown(report: CoverageReport) -> str:
    """The calendar as Markdown text (the newest MARKDOWN_MONTHS months of each kind)."""
    days = Days(BusinessDays(report.calendar))
    legend = ", ".join(f"`{ch}` {text.split(':')[0]}" for _, ch, text in STATES.values() if ch.strip())
    lines = ["# Statement coverage calendar", "", f"One character per day (per month for monthly kinds): {legend}.", ""]
    for kind in report.kinds[:MARKDOWN_KINDS]:
        lines += [f"**{kind.account} {kind.query}** ({kind.cadence}, {len(kind.gaps)} gap(s))", "", "```"]
        for label, cells in grid(report, kind, days, MARKDOWN_MONTHS):
            lines.append(f"{label:<7} " + "".join(" " if d is None else STATES[s][1] for d, s in cells).rstrip())
        lines += ["```", ""]
    if len(report.kinds) > MARKDOWN_KINDS:
        lines.append(f"... and {len(report.kinds) - MARKDOWN_KINDS} more kind(s): `ibreports coverage --html FILE`.")
    if not report.kinds:
        lines.append("No statements in the archive.")
    return "\n".join(lines) + "\n"
