"""flexweb produce(): per-account statements in IBKR's name grammar, date windows, CSV, idempotent content."""

from __future__ import annotations

import stat
import xml.etree.ElementTree as ET
from datetime import date

import pytest

from ibreports.errors import ConfigError, RemoteFileError
from ibreports.files import sha256_file
from ibreports.remote.flexweb.remote import Window, windows
from ibreports.remote.flexweb.settings import FlexQuery
from ibreports.statements import parse, statement_key
from tests.flexsource import flex_remote

ACCOUNTS = ["U1234567", "U7654321", "DU1111111"]


def run(emulator, token, queries, staging, since=None, until=None, **kw):
    staging.mkdir(exist_ok=True)
    with flex_remote(emulator, token, queries, **kw) as remote:
        return list(remote.produce(since, until, staging))


def test_one_statement_per_account_each_a_valid_flex_document(flexweb, tmp_path):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ACCOUNTS)
    made = run(flexweb, token, [query], tmp_path / "s")
    assert len(made) == 3
    for item, account in zip(made, ACCOUNTS):
        st = parse(item.name, 0)
        assert st.parsed and st.account == account and st.query == "DailyActivity" and st.fmt == "xml"
        assert statement_key(st).startswith(f"statements/{account}/")
        assert stat.S_IMODE(item.path.stat().st_mode) == 0o600 and item.path.parent == tmp_path / "s"
        assert item.size == item.path.stat().st_size and item.sha256 == sha256_file(item.path)
        root = ET.parse(item.path).getroot()
        assert root.tag == "FlexQueryResponse" and root.get("queryName") == "DailyActivity"
        [holder] = list(root)
        assert holder.tag == "FlexStatements" and holder.get("count") == "1"
        [statement] = list(holder)
        assert statement.get("accountId") == account
        assert {e.get("accountId") for e in statement.iter() if e.get("accountId")} == {account}
        assert st.period_start.strftime("%Y%m%d") == statement.get("fromDate")
    assert not list((tmp_path / "s").glob(".*.part"))


def test_a_refetched_statement_is_byte_identical_and_changed_data_is_not(flexweb, tmp_path):
    """IBKR stamps every generation (whenGenerated): left out, a re-run gets the same bytes."""
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"])
    [first] = run(flexweb, token, [query], tmp_path / "a")
    [again] = run(flexweb, token, [query], tmp_path / "b")
    assert first.name == again.name and first.sha256 == again.sha256
    assert b"whenGenerated" not in first.path.read_bytes()
    query.version += 1  # IBKR corrected the statement
    [changed] = run(flexweb, token, [query], tmp_path / "c")
    assert changed.name == first.name and changed.sha256 != first.sha256


def test_daily_dates_ask_one_statement_per_weekday(flexweb, tmp_path):
    flexweb.today = date(2026, 11, 20)
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567", "U7654321"])
    made = run(flexweb, token, [query], tmp_path / "s", since=date(2026, 11, 6), until=date(2026, 11, 10))
    sent = [(h.params["fd"], h.params["td"]) for h in flexweb.hits if h.path.endswith("SendRequest")]
    assert sent == [("20261106", "20261106"), ("20261109", "20261109"), ("20261110", "20261110")]
    assert sorted(m.name for m in made) == sorted(
        f"{a}.DailyActivity.{d}.{d}.xml" for a in ("U1234567", "U7654321") for d in ("20261106", "20261109", "20261110"))


def test_days_without_a_statement_are_skipped_not_failed(flexweb, tmp_path):
    flexweb.today = date(2026, 11, 20)
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"], first_day=date(2026, 11, 10))
    made = run(flexweb, token, [query], tmp_path / "s", since=date(2026, 11, 9), until=date(2026, 11, 10))
    assert [m.name for m in made] == ["U1234567.DailyActivity.20261110.20261110.xml"]
    assert flexweb.answers(token) == ["1003", "ok", "ok"]


def test_range_and_monthly_queries_ask_their_own_windows(flexweb, tmp_path):
    flexweb.today = date(2026, 11, 20)
    token = flexweb.add_token().value
    monthly = flexweb.add_query("MonthlyActivity", ["U1234567"])
    ranged = flexweb.add_query("Trades", ["U1234567"])
    made = run(flexweb, token, [(monthly, "monthly"), (ranged, "range")], tmp_path / "s",
               since=date(2026, 9, 15), until=date(2026, 11, 19))
    assert sorted(m.name for m in made) == [
        "U1234567.MonthlyActivity.20260901.20260930.xml",
        "U1234567.MonthlyActivity.20261001.20261031.xml",  # November is not over: not asked
        "U1234567.Trades.20260915.20261119.xml",
    ]


def test_windows_respect_ibkr_limits():
    today = date(2026, 12, 2)
    long = windows(FlexQuery("1", "Q", "range"), date(2025, 1, 1), date(2026, 6, 30), today)
    assert all((w.end - w.start).days < 365 for w in long)
    assert long[0].start == date(2025, 1, 1) and long[-1].end == date(2026, 6, 30)
    assert all((b.start - a.end).days == 1 for a, b in zip(long, long[1:]))  # no gap, no overlap
    assert windows(FlexQuery("1", "Q"), None, None, today) == [Window(None, None)]
    assert windows(FlexQuery("1", "Q"), date(2026, 11, 30), None, today) == [
        Window(date(2026, 11, 30), date(2026, 11, 30)), Window(date(2026, 12, 1), date(2026, 12, 1))]
    with pytest.raises(ConfigError, match="empty"):
        windows(FlexQuery("1", "Q"), date(2026, 11, 3), date(2026, 11, 2), today)


def test_a_fixed_period_query_says_it_cannot_take_dates_and_the_others_still_run(flexweb, tmp_path):
    flexweb.today = date(2026, 11, 20)
    token = flexweb.add_token().value
    fixed = flexweb.add_query("YearToDate", ["U1234567"])
    daily = flexweb.add_query("DailyActivity", ["U1234567"])
    made = []
    with pytest.raises(ConfigError) as caught:
        staging = tmp_path / "s"
        staging.mkdir()
        with flex_remote(flexweb, token, [(fixed, "fixed"), daily]) as remote:
            for item in remote.produce(date(2026, 11, 10), date(2026, 11, 10), staging):
                made.append(item.name)
    assert "fixed period" in caught.value.message and "was not" in caught.value.message
    assert made == ["U1234567.DailyActivity.20261110.20261110.xml"]
    assert all(h.params["q"] != fixed.id for h in flexweb.hits)


def test_a_refused_query_does_not_stop_the_others(flexweb, tmp_path):
    token = flexweb.add_token().value
    broken = flexweb.add_query("Broken", ["U1234567"], legacy=True)
    good = flexweb.add_query("DailyActivity", ["U1234567"])
    staging = tmp_path / "s"
    staging.mkdir()
    remote = flex_remote(flexweb, token, [broken, good])
    made = [m.name for m in remote.produce(None, None, staging)]  # a caller that lists it whole loses nothing
    assert len(made) == 1 and ".DailyActivity." in made[0]
    with pytest.raises(ConfigError, match="error 1010"):
        remote.close()  # the query's error comes once the others were handled


def test_iso_dates_in_the_statement_still_give_yyyymmdd_names(flexweb, tmp_path):
    flexweb.today = date(2026, 11, 20)
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"], date_format="%Y-%m-%d")
    [made] = run(flexweb, token, [query], tmp_path / "s", since=date(2026, 11, 2), until=date(2026, 11, 2))
    assert made.name == "U1234567.DailyActivity.20261102.20261102.xml"


def test_csv_query_is_one_object_named_by_its_account_and_its_own_dates(flexweb, tmp_path):
    flexweb.today = date(2026, 11, 20)
    token = flexweb.add_token().value
    query = flexweb.add_query("TradesCsv", ["U1234567"], fmt="csv")
    [made] = run(flexweb, token, [query], tmp_path / "s", since=date(2026, 11, 3), until=date(2026, 11, 3))
    assert made.name == "U1234567.TradesCsv.20261103.20261103.csv"
    assert made.path.read_bytes().startswith(b'"ClientAccountID"')  # kept byte for byte
    [own] = run(flexweb, token, [query], tmp_path / "t")
    # Its own period (IBKR: the last business day, 2026-11-19): the dates its FromDate/ToDate columns say.
    assert own.name == "U1234567.TradesCsv.20261119.20261119.csv"


def test_a_multi_account_csv_cannot_be_filed_and_says_why(flexweb, tmp_path):
    token = flexweb.add_token().value
    query = flexweb.add_query("TradesCsv", ["U1234567", "U7654321"], fmt="csv")
    with pytest.raises(RemoteFileError) as caught:
        run(flexweb, token, [query], tmp_path / "s")
    assert "2 accounts" in caught.value.message and "XML" in caught.value.remedy


def test_dates_every_account_already_has_are_not_asked_again(flexweb, tmp_path):
    flexweb.today = date(2026, 11, 20)
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567", "U7654321"])
    archived = {
        "U1234567.DailyActivity.20261109.20261109.xml", "U7654321.DailyActivity.20261109.20261109.xml",
        "U1234567.DailyActivity.20261110.20261110.xml",  # the other account's 10th is missing
        "U1234567.Other.20261111.20261111.xml",
    }
    staging = tmp_path / "s"
    staging.mkdir()
    with flex_remote(flexweb, token, [query]) as remote:
        made = list(remote.produce(date(2026, 11, 9), date(2026, 11, 11), staging, archived=archived))
    sent = [h.params["fd"] for h in flexweb.hits if h.path.endswith("SendRequest")]
    assert sent == ["20261110", "20261111"]  # the 9th is complete: IBKR's requests go to the gaps
    assert len(made) == 4


def test_monthly_windows_are_the_months_ending_in_the_range():
    q = FlexQuery("1", "M", "monthly")
    assert windows(q, date(2026, 9, 15), date(2026, 10, 15), date(2026, 12, 2)) == [
        Window(date(2026, 9, 1), date(2026, 9, 30))]  # October ends after --until: its statement is not in range
    assert windows(q, date(2026, 10, 1), date(2026, 12, 1), date(2026, 11, 30)) == [
        Window(date(2026, 10, 1), date(2026, 10, 31))]  # November is not over yet
