"""The coverage calendar (ibreports/coverage_calendar.py): its HTML parsed back with html.parser, cell by cell."""

from __future__ import annotations

import json
import stat
from datetime import date, timedelta
from html.parser import HTMLParser

from ibreports.archive.local import LocalArchive
from ibreports.calendars import BusinessDays
from ibreports.cli import main
from ibreports.config import ArchiveConfig
from ibreports.coverage import compute, remote_ranges
from ibreports.coverage_calendar import calendar_markdown, html
from ibreports.statements import parse, statement_key

TODAY = date(2026, 12, 7)
NOW = 1_796_601_600.0  # 2026-12-07T00:00:00Z
DAY = 86400.0


class Cells(HTMLParser):
    """(account, query) -> {data-date: data-state}, and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: dict[tuple[str, str], dict[str, str]] = {}
        self.tags: list[tuple[str, dict]] = []
        self.current: tuple[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "section":
            self.current = (attrs["data-account"], attrs["data-query"])
            self.kinds[self.current] = {}
        elif tag == "td" and "data-date" in attrs:
            assert attrs["class"] == attrs["data-state"]
            self.kinds[self.current][attrs["data-date"]] = attrs["data-state"]


def cells(page: str) -> Cells:
    parser = Cells()
    parser.feed(page)
    parser.close()
    return parser


def daily(day: date, account: str = "U1234567") -> str:
    return f"{account}.DailyActivity.{day:%Y%m%d}.{day:%Y%m%d}.xml"


def known_archive() -> tuple[list[str], dict]:
    """November 2026 of one daily kind (three days missing, one in conflict) and a monthly kind."""
    missing = {date(2026, 11, 9), date(2026, 11, 10), date(2026, 11, 11)}
    held = [d for d in BusinessDays("NYSE").between(date(2026, 11, 2), date(2026, 12, 3)) if d not in missing]
    keys = [statement_key(parse(daily(d), 0)) for d in held]
    keys += [statement_key(parse(f"F1234567.Monthly.2026{m:02d}01.2026{m:02d}{e}.xml", 0)) for m, e in ((9, 30), (10, 31))]
    keys.append(f"conflicts/ibkr-sftp/2026/11/{daily(date(2026, 11, 16))}.pgp.0123456789abcdef")
    remote = remote_ranges([("ibkr-sftp", daily(date(2026, 11, 10)) + ".pgp", NOW - 95 * DAY),  # 5 days left
                            ("ibkr-sftp", daily(date(2026, 11, 11)) + ".pgp", NOW - 20 * DAY)], 100, now=NOW)
    return keys, remote


def test_each_cell_says_held_missing_at_risk_conflict_pending_or_closed():
    keys, remote = known_archive()
    report = compute(keys, remote, {"ibkr-sftp": "ok"}, today=TODAY, grace_days=3, warn_days=14)
    page = cells(html(report))
    days = page.kinds[("U1234567", "DailyActivity")]
    assert {d: days[d] for d in ("2026-11-06", "2026-11-09", "2026-11-10", "2026-11-11", "2026-11-12")} == {
        "2026-11-06": "held", "2026-11-09": "missing", "2026-11-10": "at-risk", "2026-11-11": "missing",
        "2026-11-12": "held"}
    assert days["2026-11-16"] == "conflict"  # a delivery kept aside under conflicts/ differs from it
    assert days["2026-11-14"] == days["2026-11-26"] == "closed"  # a Saturday, Thanksgiving
    assert days["2026-11-01"] == "none"  # before the first statement
    assert days["2026-12-04"] == days["2026-12-07"] == "pending"  # within the grace period
    assert days["2026-12-05"] == "closed" and days["2026-12-08"] == days["2026-12-31"] == "none"  # after today
    assert sorted(days) == [f"2026-{m}-{d:02d}" for m, n in (("11", 30), ("12", 31)) for d in range(1, n + 1)]
    assert sum(state == "held" for state in days.values()) == report.kinds[1].count - 1  # one is the conflict
    months = page.kinds[("F1234567", "Monthly")]
    assert {m: months[m] for m in ("2026-08", "2026-09", "2026-10", "2026-11", "2026-12")} == {
        "2026-08": "none", "2026-09": "held", "2026-10": "held", "2026-11": "missing", "2026-12": "pending"}


def test_the_page_is_self_contained():
    keys, remote = known_archive()
    page = html(compute(keys, remote, {"ibkr-sftp": "ok"}, today=TODAY))
    parsed = cells(page)
    tags = {tag for tag, _ in parsed.tags}
    assert "script" not in tags and "link" not in tags and "img" not in tags and "iframe" not in tags
    assert not any(k in ("src", "href") for _, attrs in parsed.tags for k in attrs)
    assert "url(" not in page and "@import" not in page and "http://" not in page and "https://" not in page
    assert "<style>" in page and page.startswith("<!DOCTYPE html>")


def test_what_a_source_said_is_escaped():
    keys = [statement_key(parse("U1234567.Qx.20261102.20261102.xml", 0))]
    report = compute(keys, {}, {"s<script>": "could not be listed: <script>alert(1)</script>"}, today=TODAY)
    page = html(report)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_the_markdown_calendar_has_the_same_states():
    keys, remote = known_archive()
    text = calendar_markdown(compute(keys, remote, {"ibkr-sftp": "ok"}, today=TODAY, warn_days=14))
    [november] = [line for line in text.splitlines() if line.startswith("2026-11 ")]
    row = november[len("2026-11 "):]
    assert row[0] == " " and row[5] == "#" and row[8:11] == "x!x" and row[15] == "c" and row[13] == "."
    assert "**F1234567 Monthly** (monthly, 1 gap(s))" in text


def test_command_writes_the_calendar_file(tmp_path, capsys):
    archive = LocalArchive(ArchiveConfig(url=str(tmp_path / "archive")))
    business = BusinessDays("NYSE").between(date.today() - timedelta(days=40), date.today() - timedelta(days=10))
    for day in business[:3] + business[4:]:
        staged = tmp_path / daily(day)
        staged.write_bytes(b"<FlexQueryResponse/>")
        archive.put(statement_key(parse(daily(day), 0)), staged, None, {}, private=True)
        staged.unlink(missing_ok=True)
    config = tmp_path / "ibreports.toml"
    config.write_text(f'[archive]\nurl = "{tmp_path / "archive"}"\n')
    out = tmp_path / "coverage.html"
    rc = main(["--config", str(config), "coverage", "--offline", "--until", business[-1].isoformat(),
               "--html", str(out), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1 and doc["gaps"] == 1
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it names accounts
    states = cells(out.read_text()).kinds[("U1234567", "DailyActivity")]
    assert states[business[3].isoformat()] == "missing" and states[business[2].isoformat()] == "held"
    assert not list(tmp_path.glob(".coverage.html.*"))  # no temporary file left
    rc = main(["--config", str(config), "coverage", "--offline", "--html", str(tmp_path / "no" / "such" / "c.html")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot write it" in err and "remedy:" in err
