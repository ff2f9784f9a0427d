"""Statement names: the safety check, the grammar, archive keys and the purge horizon."""

from datetime import date, datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ibreports import statements
from ibreports.errors import ConfigError, RemoteFileError
from ibreports.statements import Statement, age_days, check_name, days_left, original_key, parse, statement_key

MTIME = datetime(2026, 11, 3, 23, 59, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "is empty"),
        (".", "relative folder"),
        ("..", "relative folder"),
        ("../etc/passwd", "path separator"),
        ("/etc/passwd", "path separator"),
        ("a\\b.xml", "path separator"),
        ("a\0b.xml", "NUL"),
        ("a\nb.xml", "control character"),
        ("a\rb.xml", "control character"),
        ("a\x1bb.xml", "control character"),
        ("a\x7fb.xml", "control character"),
        ("a\x85b.xml", "control character"),
        ("a\udcffb.xml", "not valid UTF-8"),
        ("a\u2028b.xml", "non-printable"),
        ("report\u202egpj.exe", "non-printable"),
        ("x" * 256, "longer than 255 bytes"),
        ("é" * 128, "longer than 255 bytes"),
    ],
)
def test_check_name_rejects_hostile_names(name: str, problem: str) -> None:
    with pytest.raises(RemoteFileError) as info:
        check_name(name)
    assert problem in info.value.message
    assert len(info.value.message) < 200  # the name is shown cut and escaped
    assert "\n" not in info.value.message and "\0" not in info.value.message


@pytest.mark.parametrize(
    "name",
    ["U1234567.DailyActivity.20261101.20261101.xml.pgp", "-rf", "...", ".hidden", "a b.csv", "é" * 127, "x" * 255],
)
def test_check_name_accepts_plain_names(name: str) -> None:
    assert check_name(name) == name


def test_parse_standard_name() -> None:
    s = parse("U1234567.DailyActivity.20261101.20261102.xml.pgp", MTIME)
    assert s == Statement(
        name="U1234567.DailyActivity.20261101.20261102.xml.pgp", account="U1234567", query="DailyActivity",
        period_start=date(2026, 11, 1), period_end=date(2026, 11, 2), fmt="xml", encryption="pgp",
        statement_date=date(2026, 11, 2), parsed=True,
    )
    assert s.decrypted_name == "U1234567.DailyActivity.20261101.20261102.xml"


@pytest.mark.parametrize(
    ("name", "account", "fmt", "encryption", "decrypted"),
    [
        ("DU7654321.Flex_Trades-2.20261001.20261031.csv.gpg", "DU7654321", "csv", "gpg", "DU7654321.Flex_Trades-2.20261001.20261031.csv"),
        ("F1234567.Monthly.20261001.20261031.zip.asc", "F1234567", "zip", "asc", "F1234567.Monthly.20261001.20261031.zip"),
        ("I12345.Daily.20261101.20261101.xml", "I12345", "xml", None, "I12345.Daily.20261101.20261101.xml"),
        ("U1234567.Daily.20261101.20261101.XML.PGP", "U1234567", "xml", "pgp", "U1234567.Daily.20261101.20261101.XML"),
        ("U1234567.Daily.20261101.20261101.pgp", "U1234567", None, "pgp", "U1234567.Daily.20261101.20261101"),
    ],
)
def test_parse_variants(name: str, account: str, fmt: str | None, encryption: str | None, decrypted: str) -> None:
    s = parse(name, MTIME)
    assert (s.parsed, s.account, s.fmt, s.encryption, s.decrypted_name) == (True, account, fmt, encryption, decrypted)


# IBKR's delivery names, as they appear on its sFTP/FTP servers and in Flex deliveries:
# (name, account, query or kind, from, to, format, encryption).
D = date
DELIVERIES = [
    # Activity Flex queries: IBKR's name of the query, as typed in Client Portal
    ("U1234567.DailyActivity.20261101.20261101.xml.pgp", "U1234567", "DailyActivity", D(2026, 11, 1), D(2026, 11, 1), "xml", "pgp"),
    ("U1234567.Daily Activity.20261101.20261101.xml.pgp", "U1234567", "Daily Activity", D(2026, 11, 1), D(2026, 11, 1), "xml", "pgp"),
    ("U1234567.Activity v2.1.20261101.20261101.xml", "U1234567", "Activity v2.1", D(2026, 11, 1), D(2026, 11, 1), "xml", None),
    ("U1234567.My.Daily.Query.20261101.20261101.csv.gpg", "U1234567", "My.Daily.Query", D(2026, 11, 1), D(2026, 11, 1), "csv", "gpg"),
    ("U1234567.Activity.20261015.xml", "U1234567", "Activity", D(2026, 10, 15), D(2026, 10, 15), "xml", None),
    # Trade confirmation Flex queries (intraday and daily)
    ("U1234567.TradeConfirms.20261102.20261102.xml.pgp", "U1234567", "TradeConfirms", D(2026, 11, 2), D(2026, 11, 2), "xml", "pgp"),
    ("U1234567.Trade Confirmation Flex.20261102.20261102.csv.asc", "U1234567", "Trade Confirmation Flex", D(2026, 11, 2), D(2026, 11, 2), "csv", "asc"),
    # Monthly and quarterly statements, zipped
    ("U1234567_Quarterly_20261001_20261231.zip.pgp", "U1234567", "Quarterly", D(2026, 10, 1), D(2026, 12, 31), "zip", "pgp"),
    ("U1234567_Monthly_20261001_20261031.zip.pgp", "U1234567", "Monthly", D(2026, 10, 1), D(2026, 10, 31), "zip", "pgp"),
    ("U1234567.MonthlyActivity.20261001.20261031.zip.asc", "U1234567", "MonthlyActivity", D(2026, 10, 1), D(2026, 10, 31), "zip", "asc"),
    # Statements IBKR names itself: account, kind, date(s)
    ("U1234567_Activity_20261101.pdf", "U1234567", "Activity", D(2026, 11, 1), D(2026, 11, 1), "pdf", None),
    ("U1234567_Daily_Activity_20261101_20261101.csv.pgp", "U1234567", "Daily_Activity", D(2026, 11, 1), D(2026, 11, 1), "csv", "pgp"),
    ("U1234567_20261101.xml.pgp", "U1234567", None, D(2026, 11, 1), D(2026, 11, 1), "xml", "pgp"),
    # Mark-to-market reports
    ("U1234567.MTM.20261102.20261102.csv.pgp", "U1234567", "MTM", D(2026, 11, 2), D(2026, 11, 2), "csv", "pgp"),
    ("U1234567_MTM_Summary_20261102.csv", "U1234567", "MTM_Summary", D(2026, 11, 2), D(2026, 11, 2), "csv", None),
    # Advisor / master ('F') and paper ('DU') accounts, consolidated and per client
    ("F1234567.AdvisorDaily.20261102.20261102.xml.pgp", "F1234567", "AdvisorDaily", D(2026, 11, 2), D(2026, 11, 2), "xml", "pgp"),
    ("F1234567_Quarterly_20260701_20260930.zip.gpg", "F1234567", "Quarterly", D(2026, 7, 1), D(2026, 9, 30), "zip", "gpg"),
    ("DU7654321.Flex_Trades-2.20261001.20261031.csv.gpg", "DU7654321", "Flex_Trades-2", D(2026, 10, 1), D(2026, 10, 31), "csv", "gpg"),
    # CSV with IBKR's BOF/HEADER records: the name is the same as without them
    ("U1234567.DailyCSV.20261102.20261102.csv", "U1234567", "DailyCSV", D(2026, 11, 2), D(2026, 11, 2), "csv", None),
]


@pytest.mark.parametrize(("name", "account", "query", "start", "end", "fmt", "encryption"), DELIVERIES,
                         ids=[row[0] for row in DELIVERIES])
def test_ibkr_delivery_names_are_filed_under_account_kind_and_dates(name, account, query, start, end, fmt,
                                                                    encryption) -> None:
    s = parse(name, MTIME)
    assert (s.parsed, s.account, s.query, s.period_start, s.period_end, s.fmt, s.encryption) == (
        True, account, query, start, end, fmt, encryption)
    assert statement_key(s) == f"statements/{account}/{end:%Y/%m}/{s.decrypted_name}"
    assert not statement_key(s).startswith(f"statements/{statements.UNSORTED}/")


@pytest.mark.parametrize("query", ["DailyActivity", "Daily Activity", "Activity v2.1", "My.Daily.Query", "Flex_Trades-2"])
def test_query_token_round_trips(query: str) -> None:
    assert statements.query_token(query) == query


@pytest.mark.parametrize("query", ["", " Daily", "Daily ", ".Daily", "Daily.", "a/b", "Daily.20261101", "a\nb"])
def test_query_token_refuses_what_would_not_parse_back(query: str) -> None:
    assert statements.query_token(query) is None


def test_parse_single_date() -> None:
    s = parse("U1234567.Activity.20261015.xml", MTIME)
    assert s.parsed and s.period_start == s.period_end == s.statement_date == date(2026, 10, 15)


@pytest.mark.parametrize(
    "name",
    [
        "statement.xml.pgp",
        "u1234567.Daily.20261101.20261101.xml",  # lower-case account
        "U1234567.Daily.20261399.20261101.xml",  # no such date
        "U1234567.Daily.20261102.20261101.xml",  # period ends before it starts
        "U1234567. Daily.20261101.20261101.xml",  # a query part with a leading space
        "U1234567..20261101.20261101.xml",  # an empty query part
        "U1234567_Daily Activity_20261101.xml",  # underscore names hold no spaces
        "U1234567_Quarterly.2026_20261001_20261231.zip",  # nor dots
        "U1234567_Quarterly_20261231_20261001.zip",  # period ends before it starts
        "X_20261101.xml",
        "U1234567.Daily.20261101.20261101.20261101.xml",
        ".pgp",
    ],
)
def test_unparseable_names_fall_back_to_file_date(name: str) -> None:
    s = parse(name, MTIME)
    assert not s.parsed and s.account is None and s.period_end is None
    assert s.statement_date == date(2026, 11, 3)  # the mtime's UTC date, not local time


def test_encryption_suffix_needs_a_name_in_front() -> None:
    assert parse(".pgp", MTIME).encryption is None
    assert parse("..pgp", MTIME).decrypted_name == "..pgp"
    assert parse("a.pgp", MTIME).decrypted_name == "a"


def test_absurd_mtime_does_not_raise() -> None:
    for mtime in (float("nan"), float("inf"), -1e20, 1e20):
        assert parse("x.xml", mtime).statement_date == date(1970, 1, 1)


def test_archive_keys() -> None:
    s = parse("U1234567.DailyActivity.20261101.20261101.xml.pgp", MTIME)
    assert original_key("ibkr-sftp", s) == "encrypted/ibkr-sftp/2026/11/U1234567.DailyActivity.20261101.20261101.xml.pgp"
    assert statement_key(s) == "statements/U1234567/2026/11/U1234567.DailyActivity.20261101.20261101.xml"
    loose = parse("whatever.csv", datetime(2025, 2, 28, 12, tzinfo=timezone.utc).timestamp())
    assert statement_key(loose) == "statements/_unsorted/2025/02/whatever.csv"


def test_original_key_refuses_a_hostile_source_name() -> None:
    with pytest.raises(ConfigError):
        original_key("..", parse("a.xml", MTIME))


def test_purge_horizon() -> None:
    now = MTIME + 10 * statements.DAY - 1  # 9.99 days old
    assert age_days(MTIME, now) == 9
    assert days_left(MTIME, 100, now) == 91
    assert days_left(MTIME, 100, MTIME + 100 * statements.DAY) == 0
    assert days_left(MTIME, 100, MTIME + 101 * statements.DAY) == -1
    assert age_days(MTIME + 3600, MTIME) == 0  # a clock ahead of ours is not a negative age
    assert age_days(float("nan"), MTIME) == 0


def _check_keys(name: str, mtime: float) -> None:
    try:
        check_name(name)
    except RemoteFileError:
        return
    s = parse(name, mtime)
    assert isinstance(s, Statement)
    for key in (original_key("src", s), statement_key(s)):
        assert not key.startswith("/")
        segments = key.split("/")
        assert ".." not in segments and "." not in segments and "" not in segments
        assert segments[-1] in (name, s.decrypted_name)


mtimes = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**12), 10**12).map(float)


@settings(max_examples=400, deadline=None)
@given(st.text(), mtimes)
def test_any_text_parses_or_is_rejected(name: str, mtime: float) -> None:
    assert isinstance(parse(name, mtime), Statement)  # parse never raises, even on unsafe names
    _check_keys(name, mtime)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), mtimes)
def test_any_bytes_decoded_as_a_server_would(raw: bytes, mtime: float) -> None:
    # paramiko/ftplib decode names as UTF-8 with surrogateescape: undecodable bytes become surrogates.
    _check_keys(raw.decode("utf-8", "surrogateescape"), mtime)


@settings(max_examples=300, deadline=None)
@given(
    st.from_regex(r"[A-Z]{1,3}[0-9]{5,10}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True),
    st.dates(date(1990, 1, 1), date.today()),  # outside 1990..today + 1 year a name is refused
    st.sampled_from(["xml", "csv", "zip"]),
    st.sampled_from(["pgp", "gpg", "asc", None]),
)
def test_generated_ibkr_names_round_trip(acct: str, query: str, day: date, fmt: str, enc: str | None) -> None:
    name = f"{acct}.{query}.{day:%Y%m%d}.{day:%Y%m%d}.{fmt}" + (f".{enc}" if enc else "")
    s = parse(name, 0.0)
    assert (s.parsed, s.account, s.query, s.statement_date, s.fmt, s.encryption) == (True, acct, query, day, fmt, enc)
    assert statement_key(s) == f"statements/{acct}/{day:%Y/%m}/{name[: -len(enc) - 1] if enc else name}"


def test_names_dated_outside_the_sane_window_are_refused_at_parse_time() -> None:
    far = parse("U1234567.DailyActivity.99991201.99991231.xml.pgp", 0.0)
    assert not far.parsed and far.account is None and far.period_end is None
    assert "dates it 9999-12-01..9999-12-31, outside 1990-01-01.." in far.refusal
    assert statement_key(far).startswith("statements/_unsorted/1970/01/")  # never under 9999/12
    old = parse("U1234567.DailyActivity.19891231.19891231.xml", 0.0)
    assert not old.parsed and "outside 1990-01-01" in old.refusal
    ok = parse("U1234567.DailyActivity.19900101.19900101.xml", 0.0)
    assert ok.parsed and ok.refusal == ""
    assert parse("activity_export.xml", 0.0).refusal == ""  # outside the grammar: archived by file date, as ever
