"""`ibreports coverage`: gaps per account and kind from a real archive, cross-checked against a real sshd."""

from __future__ import annotations

import json
import os
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ibreports.archive.local import LocalArchive
from ibreports.calendars import BusinessDays
from ibreports.cli import main
from ibreports.config import ArchiveConfig
from ibreports.coverage import compute, new_gaps, previous_run, remote_ranges
from ibreports.statements import parse, statement_key

TOP = {"generated", "calendar", "grace_days", "since", "until", "kinds", "unsorted", "sources", "gaps", "conflicts"}
KIND = {"account", "query", "cadence", "first", "last", "count", "gaps", "odd", "conflicts"}
GAP = {"from", "to", "business_days", "status", "files", "days_left", "refused"}


def key(name: str) -> str:
    return statement_key(parse(name, 0))


def daily(account: str, day: date, query: str = "DailyActivity") -> str:
    return f"{account}.{query}.{day:%Y%m%d}.{day:%Y%m%d}.xml"


def days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def test_daily_gaps_skip_weekends_and_nyse_holidays():
    # November 2026: Thanksgiving (Thu 26th) is an NYSE holiday; the 21st/22nd and 28th/29th are weekends.
    held = [d for d in days(date(2026, 11, 16), date(2026, 11, 30)) if d not in (date(2026, 11, 19), date(2026, 11, 20))]
    keys = [key(daily("U1234567", d)) for d in held if d.weekday() < 5 and d != date(2026, 11, 26)]
    report = compute(keys, {}, {"s": "ok"}, today=date(2026, 12, 4), grace_days=3)
    [kind] = report.kinds
    assert (kind.account, kind.query, kind.cadence) == ("U1234567", "DailyActivity", "daily")
    assert (kind.first, kind.last, kind.count) == (date(2026, 11, 16), date(2026, 11, 30), len(keys))
    assert [(g.start, g.end, g.business_days, g.status) for g in kind.gaps] == [
        (date(2026, 11, 19), date(2026, 11, 20), 2, "purged")]
    assert report.exit_code == 1


def test_trailing_days_are_gaps_only_after_the_grace_period():
    keys = [key(daily("U1234567", date(2026, 11, 27))), key(daily("U1234567", date(2026, 11, 30)))]
    # Dec 1-4 (Tue-Fri) have no statement; on Dec 7 with grace 3 only Dec 1-3 are old enough.
    report = compute(keys, {}, {"s": "ok"}, today=date(2026, 12, 7), grace_days=3)
    assert [(g.start, g.end, g.business_days) for g in report.kinds[0].gaps] == [(date(2026, 12, 1), date(2026, 12, 3), 3)]
    relaxed = compute(keys, {}, {"s": "ok"}, today=date(2026, 12, 7), grace_days=10)
    assert relaxed.gaps == [] and relaxed.exit_code == 0


def test_a_single_custom_period_has_no_cadence_yet_so_no_gaps():
    report = compute([key("U1234567.Custom.20261001.20261009.xml")], {}, {"s": "ok"}, today=date(2026, 12, 7))
    assert [(k.cadence, k.count, k.gaps) for k in report.kinds] == [("single", 1, [])] and report.exit_code == 0


def test_a_single_daily_or_monthly_statement_keeps_its_cadence():
    # What is left after the others were deleted still says how often statements come.
    day = compute([key(daily("U1234567", date(2026, 11, 30)))], {}, {"s": "ok"}, today=date(2026, 12, 7))
    assert day.kinds[0].cadence == "daily"
    assert [(g.start, g.end, g.business_days) for g in day.kinds[0].gaps] == [(date(2026, 12, 1), date(2026, 12, 3), 3)]
    month = compute([key("F1234567.Monthly.20260901.20260930.xml")], {}, {"s": "ok"}, today=date(2026, 12, 7))
    assert month.kinds[0].cadence == "monthly"
    assert [(g.start, g.end) for g in month.kinds[0].gaps] == [(date(2026, 10, 1), date(2026, 11, 30))]


def test_calendar_is_configurable():
    # 2026-12-25 is a holiday on both NYSE and LSE; 2026-12-28 (Boxing Day substitute) only on the LSE.
    keys = [key(daily("U1234567", d)) for d in (date(2026, 12, 24), date(2026, 12, 29))]
    nyse = compute(keys, {}, {}, calendar="NYSE", today=date(2026, 12, 30), grace_days=0)
    lse = compute(keys, {}, {}, calendar="LSE", today=date(2026, 12, 30), grace_days=0)
    weekdays = compute(keys, {}, {}, calendar="none", today=date(2026, 12, 30), grace_days=0)
    assert [(g.start, g.end) for g in nyse.kinds[0].gaps] == [(date(2026, 12, 28), date(2026, 12, 28))]
    assert lse.kinds[0].gaps == []
    assert [(g.start, g.end, g.business_days) for g in weekdays.kinds[0].gaps] == [
        (date(2026, 12, 25), date(2026, 12, 28), 2)]
    assert nyse.kinds[0].gaps[0].status == "unknown"  # no source listed: neither on-server nor purged


def test_monthly_and_range_kinds():
    months = [(date(2026, m, 1), date(2026, m + 1, 1) - timedelta(days=1)) for m in (1, 2, 5, 6)]
    weeks = [(date(2026, 3, 2), date(2026, 3, 6)), (date(2026, 3, 16), date(2026, 3, 20))]
    keys = [key(f"F1234567.Monthly.{a:%Y%m%d}.{b:%Y%m%d}.csv") for a, b in months]
    keys += [key(f"F1234567.Weekly.{a:%Y%m%d}.{b:%Y%m%d}.csv") for a, b in weeks]
    keys += ["statements/_unsorted/2026/03/notes.txt", "encrypted/s/2026/03/F1234567.Weekly.20260309.20260313.csv.pgp"]
    report = compute(keys, {}, {"s": "ok"}, today=date(2026, 8, 5), grace_days=3)
    monthly, weekly = report.kinds
    assert monthly.cadence == "monthly" and weekly.cadence == "ranges"
    # March, April and July missing (June's statement ended June 30; July ended 5 days ago).
    assert [(g.start, g.end) for g in monthly.gaps] == [(date(2026, 3, 1), date(2026, 4, 30)),
                                                         (date(2026, 7, 1), date(2026, 7, 31))]
    assert [(g.start, g.end, g.business_days) for g in weekly.gaps] == [(date(2026, 3, 9), date(2026, 3, 13), 5)]
    assert report.unsorted == 1


def test_server_listing_marks_gaps_on_server_or_purged_and_filters_apply():
    held = [date(2026, 11, 2), date(2026, 11, 6)]
    keys = [key(daily("U1234567", d)) for d in held] + [key(daily("U7654321", date(2026, 11, 2)))]
    remote = remote_ranges([("ibkr-sftp", daily("U1234567", date(2026, 11, 4)) + ".pgp"),
                            ("ibkr-sftp", "junk \x00 name"), ("ibkr-sftp", "readme.txt")])
    report = compute(keys, remote, {"ibkr-sftp": "ok"}, accounts=["U1234567"], until=date(2026, 11, 6),
                     today=date(2026, 12, 1))
    [kind] = report.kinds
    assert [(g.start, g.end, g.status, g.files) for g in kind.gaps] == [
        (date(2026, 11, 3), date(2026, 11, 3), "purged", []),
        (date(2026, 11, 4), date(2026, 11, 4), "on-server", ["ibkr-sftp/U1234567.DailyActivity.20261104.20261104.xml.pgp"]),
        (date(2026, 11, 5), date(2026, 11, 5), "purged", []),
    ]
    since = compute(keys, remote, {"ibkr-sftp": "ok"}, accounts=["U1234567"], since=date(2026, 11, 5),
                    until=date(2026, 11, 6), today=date(2026, 12, 1))
    assert [(g.start, g.status) for g in since.kinds[0].gaps] == [(date(2026, 11, 5), "purged")]
    assert (since.kinds[0].first, since.kinds[0].count) == (date(2026, 11, 6), 1)


def test_new_gaps_are_those_overdue_since_the_previous_run():
    keys = [key(daily("U1234567", date(2026, 11, 2))), key(daily("U1234567", date(2026, 11, 10)))]
    report = compute(keys, {}, {}, today=date(2026, 11, 11), grace_days=0)
    assert len(report.gaps) == 1  # Nov 3..9
    runs = ["runs/2026/11/20261109T063000Z-abc123.json", "runs/2026/11/20261111T063000Z-def456.json", "runs/x.json"]
    current = datetime(2026, 11, 11, 6, 30, tzinfo=timezone.utc).timestamp()
    before = previous_run(runs, before=current)
    assert before == datetime(2026, 11, 9, 6, 30, tzinfo=timezone.utc).timestamp()
    assert new_gaps(report, before) == report.gaps  # Nov 9 became overdue after the Nov 9 run
    later = datetime(2026, 11, 10, 12, 0, tzinfo=timezone.utc).timestamp()
    assert new_gaps(report, later) == []  # a run on Nov 10 had seen it already
    assert new_gaps(report, None) == report.gaps


# -- the command, on a real local archive and a real sshd ------------------------------------------

@pytest.fixture
def setup(tmp_path, sshd_factory, sftp_client_key, monkeypatch):
    monkeypatch.setenv("TEST_SFTP_PASSPHRASE", sftp_client_key[2])
    server = sshd_factory([sftp_client_key[1]])
    (server.root / "outgoing").mkdir(exist_ok=True)
    archive = LocalArchive(ArchiveConfig(url=str(tmp_path / "archive")))
    return tmp_path, server, archive, sftp_client_key


def write_config(tmp_path: Path, server, key, port: int | None = None, extra: str = "") -> Path:
    kh = server.write_known_hosts(tmp_path / "known_hosts")
    path = tmp_path / "ibreports.toml"
    path.write_text(f"""
[[sources]]
name = "ibkr-sftp"
kind = "sftp"
host = "{server.host}"
port = {port or server.port}
username = "{server.username}"
key_file = "{key[0]}"
key_passphrase = "env:TEST_SFTP_PASSPHRASE"
known_hosts = "{kh}"
remote_dir = "{server.root / 'outgoing'}"
timeout = 5

[archive]
url = "{tmp_path / 'archive'}"
{extra}
""")
    return path


def test_command_reports_gaps_with_server_state_json_and_table(setup, capsys):
    tmp_path, server, archive, ssh_key = setup
    today = date.today()
    business = BusinessDays("NYSE").between(today - timedelta(days=40), today - timedelta(days=10))
    missing_on_server, missing_purged = business[5], business[10]
    for day in business:
        if day in (missing_on_server, missing_purged):
            continue
        name = daily("U1234567", day)
        (tmp_path / name).write_bytes(b"<x/>")
        archive.put(statement_key(parse(name, 0)), tmp_path / name, None, {}, private=True)
    (server.root / "outgoing" / (daily("U1234567", missing_on_server) + ".pgp")).write_bytes(b"x")
    config = write_config(tmp_path, server, ssh_key, extra="[coverage]\ngrace_days = 3\ncalendar = \"NYSE\"\n")
    until = business[-1].isoformat()

    rc = main(["--config", str(config), "coverage", "--until", until, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert set(doc) == TOP and doc["sources"] == {"ibkr-sftp": "ok"} and doc["gaps"] == 2
    [kind] = doc["kinds"]
    assert set(kind) == KIND and all(set(g) == GAP for g in kind["gaps"])
    assert kind["count"] == len(business) - 2
    assert [(g["from"], g["status"]) for g in kind["gaps"]] == [
        (missing_on_server.isoformat(), "on-server"), (missing_purged.isoformat(), "purged")]

    rc = main(["--config", str(config), "coverage", "--until", until])
    text = capsys.readouterr().out
    assert rc == 1
    assert "on the server, not archived: run `ibreports fetch`" in text
    assert "purged: ask IBKR to regenerate it (or use a Flex Web Service backfill)" in text

    rc = main(["--config", str(config), "coverage", "--since", business[11].isoformat(), "--until", until])
    assert rc == 0 and "no gap older than 3 day(s)" in capsys.readouterr().out
    rc = main(["--config", str(config), "coverage", "--account", "U0000001", "--until", until, "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["kinds"] == []


def test_unreachable_server_is_named_and_the_report_still_comes(setup, capsys):
    tmp_path, server, archive, ssh_key = setup
    for day in (date(2026, 11, 2), date(2026, 11, 4)):
        name = daily("U1234567", day)
        (tmp_path / name).write_bytes(b"<x/>")
        archive.put(statement_key(parse(name, 0)), tmp_path / name, None, {}, private=True)
    from tests.fixtures.sshd import free_port

    config = write_config(tmp_path, server, ssh_key, port=free_port())
    rc = main(["--config", str(config), "coverage", "--until", "2026-11-04", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert doc["sources"]["ibkr-sftp"].startswith("could not be listed: ")
    assert [(g["from"], g["status"]) for g in doc["kinds"][0]["gaps"]] == [("2026-11-03", "unknown")]
    rc = main(["--config", str(config), "coverage", "--until", "2026-11-04"])
    out = capsys.readouterr().out
    assert "source ibkr-sftp: could not be listed" in out and "unknown: not on the servers that were listed" in out


def test_bad_calendar_is_a_configuration_error(setup, capsys):
    tmp_path, server, _archive, ssh_key = setup
    config = write_config(tmp_path, server, ssh_key, extra="[coverage]\ncalendar = \"MOON\"\n")
    assert main(["--config", str(config), "coverage"]) == 2
    assert "coverage.calendar" in capsys.readouterr().err


def test_coverage_of_an_s3_archive_with_one_listing(s3_server, s3_bucket, tmp_path, capsys, monkeypatch):
    from ibreports.archive.s3 import S3Archive
    from tests.fixtures.s3 import s3_archive_config

    archive = S3Archive(s3_archive_config(s3_server, s3_bucket))
    for day in (date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 5)):
        name = daily("U1234567", day)
        (tmp_path / name).write_bytes(b"<x/>")
        archive.put(statement_key(parse(name, 0)), tmp_path / name, None, {}, private=True)
    conflict = f"conflicts/ibkr-sftp/2026/11/{daily('U1234567', date(2026, 11, 3))}.pgp.0123456789abcdef"
    archive.put(conflict, tmp_path / name, None, {}, private=True)  # a delivery kept apart ...
    archive.put_bytes(conflict + ".conflict.json", b"{}")  # ... with its record and no resolution: open
    config = tmp_path / "ibreports.toml"
    config.write_text(f'[archive]\nurl = "s3://{s3_bucket}/ib"\nendpoint_url = "{s3_server}"\nregion = "us-east-1"\n')
    requests: list[str] = []
    from ibreports.archive import s3client

    original = s3client.make_s3_client

    def counting(*args, **kwargs):  # observe the wire: which S3 operations the command sends
        client = original(*args, **kwargs)
        client.meta.events.register("before-call.s3.*", lambda model, **_: requests.append(model.name))
        return client

    monkeypatch.setattr("ibreports.archive.s3.make_s3_client", counting)  # the same client, only observed
    rc = main(["--config", str(config), "coverage", "--offline", "--json", "--until", "2026-11-05"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1 and doc["sources"] == {}
    assert [(g["from"], g["status"]) for g in doc["kinds"][0]["gaps"]] == [("2026-11-04", "unknown")]
    assert doc["kinds"][0]["conflicts"] == [{"from": "2026-11-03", "to": "2026-11-03", "key": conflict}]
    # One listing of the archive (statements, conflicts and run records): no request per object
    # (--offline: no run record read).
    assert requests == ["ListObjectsV2"]


# -- issue 20: cadence that one statement cannot change, dates that cannot crash, refusals named ----------

def archive_only_config(tmp_path: Path) -> Path:
    config = tmp_path / "ibreports.toml"
    config.write_text(f'[archive]\nurl = "{tmp_path / "archive"}"\n')
    return config


def put_statements(tmp_path: Path, names: list[str]) -> LocalArchive:
    archive = LocalArchive(ArchiveConfig(url=str(tmp_path / "archive")))
    for name in names:
        staged = tmp_path / name
        staged.write_bytes(b"<FlexQueryResponse/>")
        archive.put(statement_key(parse(name, 0)), staged, None, {}, private=True)
        staged.unlink(missing_ok=True)
    return archive


def test_a_multi_day_statement_in_a_daily_series_does_not_hide_19_later_missing_days(tmp_path, capsys):
    business = BusinessDays("NYSE").between(date.today() - timedelta(days=120), date.today() - timedelta(days=4))
    daily_days, (odd_from, odd_to), missing = business[-45:-24], (business[-24], business[-20]), business[-19:]
    odd = f"U1234567.DailyActivity.{odd_from:%Y%m%d}.{odd_to:%Y%m%d}.xml"
    put_statements(tmp_path, [daily("U1234567", d) for d in daily_days] + [odd])
    config = archive_only_config(tmp_path)

    rc = main(["--config", str(config), "coverage", "--offline", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1
    [kind] = doc["kinds"]
    assert kind["cadence"] == "daily" and kind["count"] == len(daily_days) + 1
    assert kind["odd"] == [{"from": odd_from.isoformat(), "to": odd_to.isoformat(), "name": odd}]
    assert [(g["from"], g["to"], g["business_days"]) for g in kind["gaps"]] == [
        (missing[0].isoformat(), missing[-1].isoformat(), 19)]
    rc = main(["--config", str(config), "coverage", "--offline"])
    text = capsys.readouterr().out
    assert rc == 1
    assert f"missing {missing[0]}..{missing[-1]} (19 business day(s))" in text
    assert f"odd: {odd_from}..{odd_to} {odd}: not a daily statement" in text


def test_a_deleted_statement_does_not_flip_the_cadence(tmp_path, capsys):
    business = BusinessDays("NYSE").between(date.today() - timedelta(days=60), date.today() - timedelta(days=4))
    kept, deleted = business[-30], business[-29]
    archive = put_statements(tmp_path, [daily("U1234567", kept), daily("U1234567", deleted)])
    config = archive_only_config(tmp_path)
    assert main(["--config", str(config), "coverage", "--offline", "--json"]) == 1
    before = json.loads(capsys.readouterr().out)["kinds"][0]
    assert before["cadence"] == "daily" and before["gaps"][0]["from"] == business[-28].isoformat()

    os.unlink(archive.root / statement_key(parse(daily("U1234567", deleted), 0)))
    assert main(["--config", str(config), "coverage", "--offline", "--json"]) == 1
    after = json.loads(capsys.readouterr().out)["kinds"][0]
    assert (after["cadence"], after["count"]) == ("daily", 1)
    assert [(g["from"], g["to"], g["business_days"]) for g in after["gaps"]] == [
        (deleted.isoformat(), business[-1].isoformat(), 29)]


def test_a_statement_dated_9999_in_the_archive_does_not_crash_coverage(tmp_path, capsys):
    # Archived before names were checked for sane dates: counted as unsorted, never a crash.
    archive = put_statements(tmp_path, [daily("U1234567", date(2026, 11, 2)), daily("U1234567", date(2026, 11, 3))])
    far = "U1234567.DailyActivity.99991201.99991231.xml"
    (tmp_path / far).write_bytes(b"<FlexQueryResponse/>")
    archive.put(f"statements/U1234567/9999/12/{far}", tmp_path / far, None, {}, private=True)
    config = archive_only_config(tmp_path)
    rc = main(["--config", str(config), "coverage", "--offline", "--until", "2026-11-03", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["unsorted"] == 1 and doc["kinds"][0]["count"] == 2
    rc = main(["--config", str(config), "coverage", "--offline", "--since", "9999-12-31", "--until", "9999-12-31"])
    assert rc == 0 and "no statements in the archive for this selection" in capsys.readouterr().out


DATES = st.dates(date(1, 1, 1), date(9999, 12, 31))
STAMP = DATES.map(lambda d: f"{d.year:04d}{d.month:02d}{d.day:02d}")
NAMES = st.one_of(
    st.builds(lambda a, q, f, t, ext: f"{a}.{q}.{f}.{t}.{ext}", st.sampled_from(["U1234567", "F7654321", "DU1111111"]),
              st.sampled_from(["DailyActivity", "Monthly", "X"]), STAMP, STAMP, st.sampled_from(["xml", "csv.pgp"])),
    st.builds(lambda a, d: f"{a}.Daily.{d}.xml", st.sampled_from(["U1234567", "U2"]), STAMP),
    st.text(max_size=40),
)
KEYS = st.lists(st.builds(lambda top, name, sha: f"{top}/U1234567/2026/11/{name}" + (f".{sha}" if top == "conflicts" else ""),
                          st.sampled_from(["statements", "conflicts", "encrypted", "runs"]), NAMES,
                          st.text("0123456789abcdef", min_size=0, max_size=16)), max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(KEYS, st.lists(st.tuples(st.just("s"), NAMES, st.floats(allow_nan=True, allow_infinity=True)), max_size=8),
       st.one_of(st.none(), DATES), st.one_of(st.none(), DATES), st.integers(-5, 10**12),
       st.sampled_from(["none", "NYSE"]))
def test_coverage_never_raises_whatever_the_archive_holds(keys, files, since, until, grace, calendar):
    from ibreports.coverage_calendar import calendar_markdown, html
    from ibreports.coverage_publish import format_table, markdown

    report = compute(keys, remote_ranges(files, 100), {"s": "ok"}, calendar=calendar, grace_days=grace,
                     since=since, until=until, today=date(2026, 12, 7),
                     refusals={f"s/{n}": ("integrity", "why") for _, n, _ in files})
    json.dumps(report.to_dict())
    assert report.exit_code in (0, 1)
    format_table(report), markdown(report, report.gaps), calendar_markdown(report), html(report)


def test_a_file_refused_on_every_run_is_named_with_its_reason_not_run_fetch(tmp_path, sftp_setup, pgp_key,
                                                                              other_pgp_key, sftp_client_key, capsys):
    from tests.configs import sftp_toml
    from tests.fixtures.pgpkeys import encrypt_bytes
    from tests.helpers import local_archive, write_config

    server, known_hosts, _delivered = sftp_setup
    business = BusinessDays("NYSE").between(date.today() - timedelta(days=30), date.today() - timedelta(days=5))
    before, blocked, after = business[-3:]
    put_statements(tmp_path, [daily("U1111111", before), daily("U1111111", after)])
    name = daily("U1111111", blocked) + ".pgp"
    encrypt_bytes(other_pgp_key.public_file, b"<FlexQueryResponse/>", server.root / "outgoing" / name)  # not our key
    archive_toml, _root = local_archive(tmp_path)
    config = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)
    assert main(["--config", str(config), "fetch"]) == 1  # refused: no-key
    capsys.readouterr()

    rc = main(["--config", str(config), "coverage", "--account", "U1111111", "--until", after.isoformat(), "--json"])
    [gap] = json.loads(capsys.readouterr().out)["kinds"][0]["gaps"]
    assert rc == 1 and (gap["from"], gap["status"], gap["files"]) == (blocked.isoformat(), "refused", [f"ibkr-sftp/{name}"])
    refusal = gap["refused"][f"ibkr-sftp/{name}"]
    assert refusal["code"] == "no-key" and "not encrypted to any key we hold" in refusal["reason"]
    assert gap["days_left"] is not None and gap["days_left"] > 90  # delivered just now: far from the purge

    rc = main(["--config", str(config), "coverage", "--account", "U1111111", "--until", after.isoformat()])
    [line] = [x for x in capsys.readouterr().out.splitlines() if "missing" in x]
    assert rc == 1 and "refused by the last run" in line and f"no-key: {name}: " in line
    assert "run `ibreports fetch`" not in line  # fetching again would refuse it again


def test_the_daily_run_marks_what_it_refused_without_reading_a_run_record(tmp_path):
    from ibreports.config import load_config
    from ibreports.coverage_publish import daily_coverage
    from ibreports.report import FileOutcome, RunReport

    business = BusinessDays("NYSE").between(date.today() - timedelta(days=30), date.today() - timedelta(days=5))
    before, blocked, after = business[-3:]
    put_statements(tmp_path, [daily("U1234567", before), daily("U1234567", after)])
    name = daily("U1234567", blocked) + ".pgp"
    run = RunReport(run_id="r", started="", sources=["ibkr-sftp"], files=[
        FileOutcome("ibkr-sftp", name, 10, datetime.now(timezone.utc).timestamp() - 95 * 86400, "U1234567",
                    blocked.isoformat(), "failed", "Decryption refused (integrity): integrity check failed.", code="integrity")])
    published = daily_coverage(load_config(archive_only_config(tmp_path)), run)
    assert (f"U1234567 DailyActivity: {blocked} (1 business day(s)) on the server, refused by the last run "
            f"(a new fetch refuses it again) (5 day(s) before the server purges it): integrity: {name}: "
            "Decryption refused (integrity)") in published.summary
    [row] = [line for line in published.calendar.splitlines() if line.startswith(f"{blocked:%Y-%m} ")]
    assert row[8 + blocked.day - 1] == "!"  # at risk: on the server, not archived, 5 days before the purge
