"""A CSV Flex answer made into statements, read as a stream of records.

With IBKR's header and trailer records ("Include header and trailer records" in the
query's delivery configuration) an answer reads::

    "BOF","F1234567","DailyActivity","2","20261102","20261102","20261103;083015",...
    "BOA","U1234567"
    "BOS","TRNT","Trades"  /  "HEADER","TRNT","ClientAccountID",...  /  "DATA","TRNT","U1234567",...
    "EOS","TRNT","1"
    "EOA","U1234567"
    "BOA","U7654321"  ...  "EOA","U7654321"
    "EOF","F1234567","2"

Each ``BOA`` ... ``EOA`` block becomes one statement (the BOF line, the block, the EOF
line), named after its account and the BOF record's dates; the BOF record's generation
time (``yyyyMMdd;HHmmss``) is emptied, so the same statement fetched twice is
byte-identical. Without those records the answer is one statement, kept byte for byte,
for the one account its ``ClientAccountID`` column names, dated by its ``FromDate`` /
``ToDate`` columns, else by the dates asked for (today's, for the query's own period).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from datetime import date
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ...errors import StatementUnavailable
from ...files import create_private
from ...statements import ACCOUNT
from .split import Piece, parse_flex_date, statement_name
from .xmlsplit import Expect

log = logging.getLogger(__name__)

ACCOUNT_COLUMNS = ("ClientAccountID", "AccountId", "accountId")
FROM_COLUMNS, TO_COLUMNS = ("FromDate", "fromDate"), ("ToDate", "toDate")
RECORD_MAX = 1 << 20  # bytes: one CSV record; a longer one is not a Flex answer
_STAMP = re.compile(r"\d{8};\d{6}")


def _records(fh: BinaryIO, what: str) -> Iterator[tuple[bytes, list[str]]]:
    """(raw bytes, fields) per CSV record; a quoted field may hold a line break."""
    pending = b""
    for line in fh:
        pending += line
        if pending.count(b'"') % 2:  # inside a quoted field: the record goes on
            if len(pending) > RECORD_MAX:
                raise StatementUnavailable(f"Flex Web Service, {what}: the CSV answer has an unterminated quoted "
                                           "field.", "Run the fetch again; if it persists, check the query.")
            continue
        raw, pending = pending, b""
        text = raw.decode("utf-8", errors="replace").lstrip("\ufeff")
        fields = next(csv.reader([text.rstrip("\r\n")]), [])
        yield raw, fields
    if pending:
        yield pending, next(csv.reader([pending.decode("utf-8", errors="replace").rstrip("\r\n")]), [])


def _first_record(source: Path, what: str) -> list[str]:
    with open(source, "rb") as fh:
        for _raw, fields in _records(fh, what):
            return fields
    return []


def split_csv(source: Path, query: str | None, what: str, staging: Path, expect: Expect, today: date,
              on_query: Callable[[str], str] | None = None) -> Iterator[Piece]:
    """The statements of a CSV answer (see the module's docstring)."""
    first = _first_record(source, what)
    if first[:1] == ["BOF"]:
        yield from _with_records(source, query, what, staging, expect, on_query, first)
    else:
        if query is None and on_query is not None:
            query = on_query("")
        yield _whole(source, query or "", what, staging, expect, today)


def _bof_dates(fields: list[str]) -> tuple[date, date] | None:
    days = [d for d in (parse_flex_date(f) for f in fields[2:] if not _STAMP.fullmatch(f.strip())) if d]
    return (days[0], days[1]) if len(days) >= 2 else None


def _check_period(start: date, end: date, expect: Expect, what: str, account: str) -> None:
    if expect.start is not None and expect.end is not None and not (expect.start <= start <= end <= expect.end):
        raise StatementUnavailable(
            f"Flex Web Service, {what}: IBKR's answer holds {account}'s statement for {start}..{end}, not for the "
            "dates asked; it was not archived.",
            "Run the fetch again; if it persists, check the query's Period in Client Portal and report the answer "
            "to IBKR.",
        )


def _blank_stamp(raw: bytes) -> bytes:
    return re.sub(rb'(^|,)("?)\d{8};\d{6}\2(?=,|\r?\n?$)', rb"\1\2\2", raw, count=1)


def _with_records(source: Path, query: str | None, what: str, staging: Path, expect: Expect,
                  on_query: Callable[[str], str] | None, bof: list[str]) -> Iterator[Piece]:
    dates = _bof_dates(bof)
    if dates is None:
        raise StatementUnavailable(
            f"Flex Web Service, {what}: the CSV answer's BOF record holds no dates in a format that says which "
            "number is the day.",
            "Set the query's Date Format to yyyyMMdd (Delivery Configuration of the query in Client Portal).",
        )
    if on_query is not None:
        query = on_query(bof[2].strip() if len(bof) > 2 else "")
    start, end = dates
    head = b""
    blocks: list[tuple[str, Path]] = []
    out: BinaryIO | None = None
    current = ""
    column: int | None = None  # the ClientAccountID column of the block's current section
    seen: set[str] = set()
    try:
        with open(source, "rb") as fh:
            for raw, fields in _records(fh, what):
                kind = fields[0] if fields else ""
                if kind == "BOF":
                    head = _blank_stamp(raw)
                elif kind == "BOA":
                    current, column = (fields[1].strip() if len(fields) > 1 else ""), None
                    if not ACCOUNT.fullmatch(current):
                        raise StatementUnavailable(
                            f"Flex Web Service, {what}: a BOA record names {current[:40]!r}, not an IBKR account.",
                            "Report this to IBKR.")
                    _check_period(start, end, expect, what, current)
                    name = statement_name(current, query or "", start, end, "csv")
                    if name in seen:
                        raise StatementUnavailable(f"Flex Web Service, {what}: the answer holds two statements "
                                                   f"named {name}.", "Report this to IBKR.")
                    seen.add(name)
                    path = staging / name
                    path.unlink(missing_ok=True)
                    out = os.fdopen(create_private(path), "wb")
                    out.write(head)
                    out.write(raw)
                    blocks.append((name, path))
                elif out is not None:
                    if kind == "HEADER":
                        column = next((fields.index(c) for c in ACCOUNT_COLUMNS if c in fields), None)
                    elif kind == "DATA" and column is not None and len(fields) > column \
                            and fields[column].strip() != current:
                        raise StatementUnavailable(
                            f"Flex Web Service, {what}: {current}'s block of the CSV answer holds a row of "
                            f"{fields[column].strip()[:40]!r}; it was not archived.",
                            "Run the fetch again; if it persists, report the answer to IBKR.")
                    out.write(raw)
                    if kind == "EOA":
                        out.close()
                        out = None
                elif kind == "EOF":
                    for _name, path in blocks:
                        with open(path, "ab") as tail:
                            tail.write(raw)
            if out is not None:
                raise StatementUnavailable(f"Flex Web Service, {what}: the CSV answer ends inside {current}'s "
                                           "block (no EOA record).", "Run the fetch again.")
        if not blocks:  # one account, no BOA blocks: the whole answer
            account = bof[1].strip() if len(bof) > 1 else ""
            if not ACCOUNT.fullmatch(account):
                account = _account(source, what)
            _check_period(start, end, expect, what, account)
            name = statement_name(account, query or "", start, end, "csv")
            path = staging / name
            path.unlink(missing_ok=True)
            with open(source, "rb") as fh, os.fdopen(create_private(path), "wb") as dest:
                for n, (raw, fields) in enumerate(_records(fh, what)):
                    dest.write(_blank_stamp(raw) if n == 0 else raw)
            blocks.append((name, path))
    except BaseException:
        if out is not None:
            out.close()
        for _name, path in blocks:
            path.unlink(missing_ok=True)
        raise
    for name, path in blocks:
        yield Piece(name, path)


def _account(source: Path, what: str) -> str:
    """The one account a CSV answer without BOA records is about (its ClientAccountID column)."""
    accounts: set[str] = set()
    column = None
    with open(source, "rb") as fh:
        for _raw, row in _records(fh, what):
            for name in ACCOUNT_COLUMNS:
                if name in row:  # a header row (a CSV answer repeats one per section)
                    column = row.index(name)
                    break
            else:
                if column is not None and len(row) > column and ACCOUNT.fullmatch(row[column].strip()):
                    accounts.add(row[column].strip())
    if len(accounts) != 1:
        found = "no account" if not accounts else f"{len(accounts)} accounts"
        raise StatementUnavailable(
            f"Flex Web Service, {what}: the CSV answer names {found} in a ClientAccountID column and has no BOA "
            "records, so it cannot be filed under one account.",
            "Add the Account ID field to the query's sections and select one account per CSV query, turn on the "
            "query's header and trailer records (split per account), or use the XML format (split per account).",
        )
    return accounts.pop()


def _content_dates(source: Path, what: str) -> tuple[date, date] | None:
    """The earliest FromDate and latest ToDate a CSV answer's columns hold, if it has such columns."""
    start = end = None
    cols: tuple[int | None, int | None] = (None, None)
    with open(source, "rb") as fh:
        for _raw, row in _records(fh, what):
            f = next((row.index(c) for c in FROM_COLUMNS if c in row), None)
            t = next((row.index(c) for c in TO_COLUMNS if c in row), None)
            if f is not None or t is not None or any(c in row for c in ACCOUNT_COLUMNS):  # a header row
                cols = (f, t)
                continue
            for i, is_from in ((cols[0], True), (cols[1], False)):
                if i is None or len(row) <= i:
                    continue
                day = parse_flex_date(row[i])
                if day is None:
                    continue
                if is_from:
                    start = day if start is None else min(start, day)
                else:
                    end = day if end is None else max(end, day)
    if start is None or end is None or start > end:
        return None
    return start, end


def _whole(source: Path, query: str, what: str, staging: Path, expect: Expect, today: date) -> Piece:
    account = _account(source, what)
    dates = _content_dates(source, what)
    if dates is None:
        dates = (expect.start, expect.end) if expect.start and expect.end else (today, today)
        log.warning("Flex Web Service, %s: the CSV answer says nothing of its dates (no header records, no "
                    "FromDate/ToDate columns); named %s..%s", what, dates[0], dates[1])
    else:
        _check_period(dates[0], dates[1], expect, what, account)
    name = statement_name(account, query, dates[0], dates[1], "csv")
    path = staging / name
    path.unlink(missing_ok=True)
    os.replace(source, path)
    return Piece(name, path)
