"""A Flex answer, made into statements named in IBKR's file-name grammar.

XML (``FlexQueryResponse``, xmlsplit.py): one statement per ``FlexStatement``, i.e. per
account, named ``<accountId>.<query>.<fromDate>.<toDate>.xml`` from the element's own
attributes, so it lands on the same archive key as the same statement delivered by sFTP.
Each is kept a valid Flex document: its ``FlexStatement`` element inside a
``FlexQueryResponse`` (the answer's own attributes) / ``FlexStatements count="1"``
envelope. ``whenGenerated`` is left out: IBKR stamps every generation with the time, so
without it the same statement fetched twice is byte-identical (a re-run writes nothing)
and any other difference is a real change (a conflict, never a replace).

CSV (csvsplit.py): with IBKR's header and trailer records (``BOF`` / ``BOA`` ... ``EOA`` /
``EOF``) one statement per account block, dated by the ``BOF`` record; without them one
statement per answer, kept byte for byte, dated by its FromDate/ToDate columns.

``<query>`` is the query's configured ``name``, or, without one, the answer's own
``queryName`` (IBKR's name of the query, which is also the token of its sFTP files).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from ...errors import StatementUnavailable
from ...statements import check_name

_DATE_FORMATS = ("%Y%m%d", "%Y-%m-%d", "%Y/%m/%d", "%d-%b-%y", "%d-%b-%Y")  # the unambiguous Flex formats


@dataclass(frozen=True)
class Piece:
    """One statement written into staging (0600)."""

    name: str
    path: Path


def parse_flex_date(value: str | None) -> date | None:
    value = (value or "").strip()
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    return None


def flex_date(value: str | None, what: str, attr: str) -> date:
    """A FlexStatement date attribute in any unambiguous Flex date format."""
    day = parse_flex_date(value)
    if day is None:
        raise StatementUnavailable(
            f"Flex Web Service, {what}: the statement's {attr} '{(value or '').strip()[:40]}' is not in a date "
            "format that says which number is the day.",
            "Set the query's Date Format to yyyyMMdd (Delivery Configuration of the query in Client Portal).",
        )
    return day


def statement_name(account: str, query: str, start: date, end: date, fmt: str) -> str:
    return check_name(f"{account}.{query}.{start:%Y%m%d}.{end:%Y%m%d}.{fmt}")


def looks_like_xml(source: Path) -> bool:
    with open(source, "rb") as fh:
        head = fh.read(512).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"<")
