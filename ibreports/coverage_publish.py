"""Coverage for people: the terminal table, the daily run's Markdown artifact, and the alert for new gaps."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from .alerts import MAX_LINES, Alert, send_alerts
from .archive import open_archive
from .config import Config
from .coverage import CoverageReport, Gap, Kind, gap_line, gap_status, kind_marks, new_gaps, previous_run
from .coverage_inputs import collect_coverage, refusals_of
from .coverage_calendar import calendar_markdown
from .errors import IbreportsError
from .report import RunReport

log = logging.getLogger("ibreports.coverage")


@dataclass(frozen=True)
class Published:
    """What the daily run publishes: the summary and the calendar, both Markdown."""

    summary: str
    calendar: str


def daily_coverage(config: Config, run: RunReport) -> Published:
    """Coverage after a run: the Markdown summary and calendar; alerts on gaps new since the previous run.

    The servers are not listed again: the run's report holds every file each source listed (and the
    error of each source that could not be listed), and what it refused. Never raises: coverage must
    not turn a retrieval run into a failure (a problem is logged as one line and published as such).
    """
    files = [(f.source, f.name, f.mtime) for f in run.files]
    state = {s: f"could not be listed: {run.source_errors[s]}" if s in run.source_errors else "ok" for s in run.sources}
    try:
        inventory = open_archive(config.archive).inventory()
        report = collect_coverage(config, keys=[k for k in inventory if k.startswith(("statements/", "conflicts/"))],
                                  listing=(files, state), refusals=refusals_of(run.files))
        started = datetime.fromisoformat(run.started).timestamp() if run.started else None
        fresh = new_gaps(report, previous_run([k for k in inventory if k.startswith("runs/")], started))
        if fresh:
            alert = gap_alert(report, fresh)
            if link := run.origin.get("prefect_flow_run_url"):  # the alert leads to the run that sent it
                alert = Alert(alert.cause, alert.title, f"{alert.body}\n\nFlow run: {link}")
            send_alerts(config, extra=[alert])
        return Published(markdown(report, fresh), calendar_markdown(report))
    except IbreportsError as exc:
        why = str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug in coverage: one line, the run stays as it was
        why = f"unexpected {type(exc).__name__}: {str(exc)[:200]} (a bug: please report it)"
        log.debug("coverage failed", exc_info=True)
    log.warning("coverage could not be computed: %s", why)
    text = f"# Statement coverage\n\nNot computed: {why}\n"
    return Published(text, text)


def gap_alert(report: CoverageReport, fresh: list[tuple[Kind, Gap]]) -> Alert:
    lines = [gap_line(k, g) for k, g in fresh]
    shown = lines[:MAX_LINES] + ([f"... and {len(lines) - MAX_LINES} more"] if len(lines) > MAX_LINES else [])
    head = (f"Statements missing from the archive for more than {report.grace_days} day(s) "
            f"({report.calendar} business days); see `ibreports coverage`.")
    return Alert("coverage", f"ibreports: {len(fresh)} new coverage gap(s)", "\n".join([head, ""] + [f"- {x}" for x in shown]))


def markdown(report: CoverageReport, fresh: list[tuple[Kind, Gap]]) -> str:
    gaps = report.gaps
    lines = ["# Statement coverage", "",
             f"**{len(report.kinds)} kind(s), {sum(k.count for k in report.kinds)} statement(s), {len(gaps)} gap(s)"
             f" ({len(fresh)} new)**", "",
             "| account | query | cadence | first | last | count | gaps |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {k.account} | {k.query} | {k.cadence} | {k.first} | {k.last} | {k.count} | {len(k.gaps)} |"
              for k in report.kinds]
    if gaps:
        lines += ["", "Gaps (older than the grace period):", ""]
        lines += [f"- {gap_line(k, g)}" + (" **(new)**" if (k, g) in fresh else "") for k, g in gaps[:200]]
    marks = [f"- {k.account} {k.query}: {line}" for k in report.kinds for line in kind_marks(k)]
    if marks:
        lines += ["", "Odd statements and open conflicts:", ""] + marks[:200]
    for source, state in sorted(report.sources.items()):
        if state != "ok":
            lines.append(f"- source **{source}**: {state}")
    return "\n".join(lines) + "\n"


def format_table(report: CoverageReport) -> str:
    """A readable table: one line per kind, then its gaps, then the sources and a summary line."""
    attempted = any(not state.startswith("not checked") for state in report.sources.values())  # else none or --offline
    lines = [f"  {'account':<10} {'query':<24} {'cadence':<8} {'first':<10} {'last':<10} {'count':>6} {'gaps':>5}"]
    for kind in report.kinds:
        mark = "!" if kind.gaps else " "
        lines.append(f"{mark} {kind.account:<10} {kind.query[:24]:<24} {kind.cadence:<8} {kind.first} {kind.last} "
                     f"{kind.count:>6} {len(kind.gaps):>5}")
        for gap in kind.gaps:
            span = str(gap.start) if gap.start == gap.end else f"{gap.start}..{gap.end}"
            files = f" ({', '.join(gap.files[:3])}{', ...' if len(gap.files) > 3 else ''})" \
                if gap.files and not gap.refused else ""
            lines.append(f"      missing {span} ({gap.business_days} business day(s)): {gap_status(gap, attempted)}{files}")
        lines += [f"      {line}" for line in kind_marks(kind)]
    if not report.kinds:
        lines.append("  (no statements in the archive" + (" for this selection)" if report.since or report.until else ")"))
    if report.unsorted:
        lines.append(f"  {report.unsorted} statement(s) without account and period in their names (not checked)")
    for source, state in sorted(report.sources.items()):
        if state != "ok":
            lines.append(f"source {source}: {state}")
    gaps = report.gaps
    days = sum(g.business_days for _, g in gaps)
    lines.append(f"{len(report.kinds)} kind(s), {sum(k.count for k in report.kinds)} statement(s); "
                 + (f"{len(gaps)} gap(s) ({days} business day(s)) older than {report.grace_days} day(s)."
                    if gaps else f"no gap older than {report.grace_days} day(s) ({report.calendar} calendar)."))
    return "\n".join(lines)
