"""What IBKR's Flex answers really hold, and what is archived of them (issues 22 and 23): advisor answers
split per account, CSV with BOF/HEADER records, IBKR's query name, answers that do not match the request,
entity declarations anywhere in the document, and a split that streams."""

from __future__ import annotations

import logging
import tracemalloc
import xml.etree.ElementTree as ET
from datetime import date

import pytest

from ibreports.errors import RemoteFileError, StatementUnavailable
from ibreports.remote.flexweb.csvsplit import split_csv
from ibreports.remote.flexweb.xmlsplit import EntityRefused, Expect, split_xml
from ibreports.statements import parse, statement_key
from tests.fixtures import flexdocs
from tests.fixtures.treesplit import tree_split
from tests.flexsource import flex_remote, produce

ADVISOR = ["F1234567", "U1111111", "U2222222", "U3333333"]
DAY = date(2026, 11, 2)


def dated(emulator, token, queries, staging, **kw):
    emulator.today = date(2026, 11, 20)
    return produce(emulator, token, queries, staging, since=DAY, until=DAY, **kw)


def test_a_multi_account_advisor_answer_is_split_per_account(flexweb, tmp_path):
    token = flexweb.add_token().value
    query = flexweb.add_query("AdvisorDaily", ADVISOR)
    made = dated(flexweb, token, [query], tmp_path / "s")
    assert [m.name for m in made] == [f"{a}.AdvisorDaily.20261102.20261102.xml" for a in ADVISOR]
    for account, item in zip(ADVISOR, made):
        root = ET.parse(item.path).getroot()
        [statement] = root.iter("FlexStatement")
        assert statement.get("accountId") == account
        assert {e.get("accountId") for e in root.iter() if e.get("accountId")} == {account}  # nothing of the others
        assert statement_key(parse(item.name, 0)) == f"statements/{account}/2026/11/{item.name}"


def test_csv_with_header_and_trailer_records_is_dated_by_its_bof_and_identical_when_made_again(flexweb, tmp_path):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyCSV", ["U1234567"], fmt="csv-records")
    [first] = dated(flexweb, token, [query], tmp_path / "a")
    [again] = dated(flexweb, token, [query], tmp_path / "b")
    assert first.name == "U1234567.DailyCSV.20261102.20261102.csv"
    data = first.path.read_bytes()
    assert data.startswith(b'"BOF","U1234567","DailyCSV","2","20261102","20261102","",')  # generation time emptied
    assert data.rstrip().endswith(b'"EOF","U1234567","1"')
    assert data == again.path.read_bytes()  # a re-run writes nothing, as for XML


def test_a_multi_account_csv_with_records_is_split_per_account(flexweb, tmp_path):
    token = flexweb.add_token().value
    query = flexweb.add_query("AdvisorCSV", ADVISOR, fmt="csv-records")
    made = dated(flexweb, token, [query], tmp_path / "s")
    assert [m.name for m in made] == [f"{a}.AdvisorCSV.20261102.20261102.csv" for a in ADVISOR]
    for account, item in zip(ADVISOR, made):
        lines = item.path.read_text().splitlines()
        assert lines[0].startswith('"BOF","F1234567"') and lines[1] == f'"BOA","{account}"'
        assert lines[-2] == f'"EOA","{account}"' and lines[-1].startswith('"EOF"')
        data_rows = [line for line in lines if line.startswith('"DATA"')]
        assert data_rows and all(f'"{account}"' in line for line in data_rows)


def test_without_a_name_the_query_is_named_as_ibkr_names_it(flexweb, tmp_path):
    # IBKR's name of the query is the token of its sFTP files, spaces and all: the same statement, one key.
    token = flexweb.add_token().value
    xml_query = flexweb.add_query("Daily Activity", ["U1234567"])
    csv_query = flexweb.add_query("Daily.Trades v2", ["U1234567"], fmt="csv-records")
    made = dated(flexweb, token, [xml_query, csv_query], tmp_path / "s", names=False)
    assert [m.name for m in made] == ["U1234567.Daily Activity.20261102.20261102.xml",
                                      "U1234567.Daily.Trades v2.20261102.20261102.csv"]
    sftp = parse("U1234567.Daily Activity.20261102.20261102.xml.pgp", 0)
    assert statement_key(parse(made[0].name, 0)) == statement_key(sftp) == (
        "statements/U1234567/2026/11/U1234567.Daily Activity.20261102.20261102.xml")


def test_a_configured_name_other_than_ibkrs_is_used_and_the_difference_named(flexweb, tmp_path, caplog):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivityWeb", ["U1234567"], reported_name="Daily Activity")
    with caplog.at_level(logging.WARNING):
        [made] = dated(flexweb, token, [query], tmp_path / "s")
    assert made.name == "U1234567.DailyActivityWeb.20261102.20261102.xml"
    assert "named 'Daily Activity' at IBKR" in caplog.text


@pytest.mark.parametrize("setup, says", [
    ({"fmt": "csv"}, "does not say the query's name"),
    ({"reported_name": "Daily/Activity"}, "cannot be part of a file name"),
    ({"reported_name": ""}, "does not say the query's name"),
])
def test_without_a_name_an_answer_that_gives_none_usable_fails_with_the_remedy(flexweb, tmp_path, setup, says):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"], **setup)
    with pytest.raises(StatementUnavailable) as caught:
        dated(flexweb, token, [query], tmp_path / "s", names=False)
    assert says in caught.value.message and "name in the source's queries" in caught.value.remedy
    assert caught.value.exit_code == 1 and list((tmp_path / "s").iterdir()) == []


@pytest.mark.parametrize("fmt", ["xml", "csv", "csv-records"])
def test_an_answer_for_other_dates_than_asked_is_refused(flexweb, tmp_path, fmt):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"], shift_days=-3, fmt=fmt)
    with pytest.raises(StatementUnavailable) as caught:
        dated(flexweb, token, [query], tmp_path / "s")
    assert "2026-10-30..2026-10-30, not for the dates asked" in caught.value.message
    assert list((tmp_path / "s").iterdir()) == []


def _answer(tmp_path, body: bytes):
    path = tmp_path / "answer.xml"
    path.write_bytes(body)
    staging = tmp_path / "out"
    staging.mkdir(exist_ok=True)
    return path, staging


LAUGH = (b'<!DOCTYPE FlexQueryResponse [<!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
         b'aaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>')


@pytest.mark.parametrize("prefix", [b"", b" " * 8192, b"<!--" + b"x" * 20000 + b"-->\n"])
def test_an_entity_declaration_anywhere_in_the_document_is_refused(tmp_path, prefix):
    # The old check read the first 4 KiB: a DOCTYPE after 8 KiB of padding (75x expansion) got through.
    flex = flexdocs.flex_xml("DailyActivity", ["U1234567"], DAY, DAY, "Custom")
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + prefix + LAUGH + flex.replace(b'acctAlias=""', b'acctAlias="&b;"')
    path, staging = _answer(tmp_path, body)
    with pytest.raises(EntityRefused, match="document type or entity declaration"):
        list(split_xml(path, "DailyActivity", "test", staging))
    assert list(staging.iterdir()) == []


def test_an_undeclared_entity_is_not_well_formed_and_what_was_complete_is_kept(tmp_path):
    flex = flexdocs.flex_xml("DailyActivity", ["U1234567", "U7654321"], DAY, DAY, "Custom")
    second = flex.rindex(b'acctAlias=""')
    path, staging = _answer(tmp_path, flex[:second] + b'acctAlias="&x;"' + flex[second + len(b'acctAlias=""'):])
    made = []
    with pytest.raises(RemoteFileError, match="not well-formed"):
        for piece in split_xml(path, "DailyActivity", "test", staging):
            made.append(piece.name)
    assert made == ["U1234567.DailyActivity.20261102.20261102.xml"]
    assert sorted(p.name for p in staging.iterdir()) == made  # the half-written second one is gone


TRICKY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<!-- made by IBKR -->\n'
    '<FlexQueryResponse queryName="Daily &amp; &quot;More&quot;" type="AF">\n<FlexStatements count="2">\n'
    '<FlexStatement accountId="U1234567" fromDate="20261102" toDate="20261102" period="LastBusinessDay" '
    'whenGenerated="20261103;010203">\n'
    '<AccountInformation accountId="U1234567" name="Zoë &lt;Ltd&gt;" note="a&#10;b&#9;c" />\n'
    '<Empty></Empty><Text>1 &lt; 2 &amp;&amp; 3 &gt; 2 <![CDATA[<raw> & ]]> é€</Text><?pi x?>\n'
    '<Trades><Trade symbol="A&amp;B" quote="it&apos;s"/><!-- c --><Trade/></Trades>\n'
    '</FlexStatement>\n'
    '<FlexStatement accountId="U7654321" fromDate="2026-11-02" toDate="2026-11-02" whenGenerated="x"/>\n'
    '</FlexStatements>\n</FlexQueryResponse>\n'
).encode()


def _as_before(source, query: str) -> dict[str, bytes]:
    """What the ElementTree splitter this module replaced wrote (kept to prove the bytes did not change)."""
    return {f"{account}.{query}.20261102.20261102.xml": data for account, data in tree_split(source)}


@pytest.mark.parametrize("body", [TRICKY, flexdocs.flex_xml("DailyActivity", ADVISOR, DAY, DAY, "Custom")])
def test_the_streamed_split_writes_the_bytes_the_tree_split_wrote(tmp_path, body):
    # Statements archived before the streaming split must be recognised, not become conflicts.
    path, staging = _answer(tmp_path, body)
    made = {p.name: p.path.read_bytes() for p in split_xml(path, "DailyActivity", "test", staging)}
    assert made == _as_before(path, "DailyActivity")
    assert all(b"whenGenerated" not in data for data in made.values())


def test_the_split_holds_a_small_fraction_of_a_statement_in_memory(tmp_path):
    # One account's statement of ~8 MB: the tree split held ~8.5x it; the stream holds a few chunks.
    rows = b"".join(b'<Trade accountId="U1234567" symbol="AAPL" tradeDate="20261102" quantity="%d" '
                    b'tradePrice="190.5" description="APPLE INC &amp; CO" />\n' % n for n in range(60_000))
    flex = flexdocs.flex_xml("DailyActivity", ["U1234567"], DAY, DAY, "Custom")
    body = flex.replace(b"<Trades>\n", b"<Trades>\n" + rows)
    path, staging = _answer(tmp_path, body)
    tracemalloc.start()
    try:
        [piece] = list(split_xml(path, "DailyActivity", "test", staging))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(body) > 7_000_000 and piece.path.stat().st_size > len(body) - 1000
    assert peak < len(body) / 20


def test_a_statement_holding_another_accounts_information_is_refused(tmp_path):
    flex = flexdocs.flex_xml("DailyActivity", ["U1234567", "U7654321"], DAY, DAY, "Custom")
    wrong = flex.replace(b'<AccountInformation accountId="U7654321"', b'<AccountInformation accountId="U9999999"')
    path, staging = _answer(tmp_path, wrong)
    made = []
    with pytest.raises(StatementUnavailable, match="filed as U7654321's holds the account information of 'U9999999'"):
        for piece in split_xml(path, "DailyActivity", "test", staging):
            made.append(piece.name)
    assert made == ["U1234567.DailyActivity.20261102.20261102.xml"]
    assert sorted(p.name for p in staging.iterdir()) == made


def test_a_csv_account_block_holding_another_accounts_rows_is_refused(tmp_path):
    body = flexdocs.flex_csv_records("AdvisorCSV", ADVISOR, DAY, DAY)
    wrong = body.replace(b'"DATA","CRTT","U2222222"', b'"DATA","CRTT","U3333333"')
    path, staging = _answer(tmp_path, wrong)
    with pytest.raises(StatementUnavailable, match="U2222222's block of the CSV answer holds a row of 'U3333333'"):
        list(split_csv(path, "AdvisorCSV", "test", staging, Expect(DAY, DAY), DAY))
    assert list(staging.iterdir()) == []  # a CSV answer is all or nothing


def test_an_unnamed_query_skips_archived_windows_once_its_name_is_known(flexweb, tmp_path):
    flexweb.today = date(2026, 11, 20)
    token = flexweb.add_token().value
    query = flexweb.add_query("Daily Activity", ["U1234567"])
    archived = {f"U1234567.Daily Activity.{d}.{d}.xml" for d in ("20261110", "20261111", "20261112")}
    staging = tmp_path / "s"
    staging.mkdir()
    with flex_remote(flexweb, token, [query], names=False) as remote:
        made = list(remote.produce(date(2026, 11, 10), date(2026, 11, 13), staging, archived=archived))
    asked = [h.params["fd"] for h in flexweb.hits if h.path.endswith("SendRequest")]
    assert asked == ["20261110", "20261113"]  # the first answer taught the name; the 11th and 12th are in
    assert [m.name for m in made] == ["U1234567.Daily Activity.20261110.20261110.xml",
                                      "U1234567.Daily Activity.20261113.20261113.xml"]
