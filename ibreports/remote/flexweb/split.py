"""A Flex answer, made into statements named in IBKR's file-name grammar.

XML (``FlexQueryResponse``): one statement per ``FlexStatement``, i.e. per account,
named ``<accountId>.<query name>.<fromDate>.<toDate>.xml`` from the element's own
attributes, so it lands on the same archive key as the same statement delivered by
sFTP. Each is kept a valid Flex document: its ``FlexStatement`` element inside a
``FlexQueryResponse`` (the answer's own attributes) / ``FlexStatements count="1"``
envelope. ``whenGenerated`` is left out: IBKR stamps every generation with the time,
so without it the same statement fetched twice is byte-identical (a re-run writes
nothing) and any other difference is a real change (a conflict, never a replace).

CSV: one statement per answer, named ``<account>.<query name>.<from>.<to>.csv`` with
the dates asked for (today's date when the query's own period was used) and the one
account its ``ClientAccountID`` column names, kept byte for byte.

The document is read as a stream (one ``FlexStatement`` in memory at a time).
"""

from __future__ import annotations

import csv
import io
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Iterator

from ...errors import StatementUnavailable
from ...files import create_private
from ...statements import ACCOUNT, check_name
from .wire import reject_dtd

VOLATILE = ("whenGenerated",)
_DATE_FORMATS = ("%Y%m%d", "%Y-%m-%d", "%Y/%m/%d", "%d-%b-%y", "%d-%b-%Y")  # the unambiguous Flex formats
CSV_ACCOUNT_COLUMNS = ("ClientAccountID", "AccountId", "accountId")
CSV_SNIFF = 4 << 20  # bytes of a CSV answer read to find its account


@dataclass(frozen=True)
class Piece:
    """One statement written into staging (0600)."""

    name: str
    path: Path


def flex_date(value: str | None, what: str, attr: str) -> date:
    """A FlexStatement date attribute in any unambiguous Flex date format."""
    value = (value or "").strip()
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    raise StatementUnavailable(
        f"Flex Web Service, {what}: the statement's {attr} '{value[:40]}' is not in a date format that says which "
        "number is the day.",
        "Set the query's Date Format to yyyyMMdd (Delivery Configuration of the query in Client Portal).",
    )


def statement_name(account: str, query: str, start: date, end: date, fmt: str) -> str:
    return check_name(f"{account}.{query}.{start:%Y%m%d}.{end:%Y%m%d}.{fmt}")


def _write(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    with os.fdopen(create_private(path), "wb") as out:
        out.write(data)


def split_xml(source: Path, query: str, what: str, staging: Path) -> Iterator[Piece]:
    """Each FlexStatement of ``source`` as its own Flex document in ``staging``."""
    with open(source, "rb") as fh:
        reject_dtd(fh.read(4096), f"Flex Web Service, {what}")
    envelope: dict[str, str] | None = None
    parents: list[ET.Element] = []
    seen: set[str] = set()
    count = 0
    try:
        for event, elem in ET.iterparse(source, events=("start", "end")):
            if event == "start":
                if envelope is None:
                    if elem.tag != "FlexQueryResponse":
                        raise _not_flex(what)
                    envelope = dict(elem.attrib)
                parents.append(elem)
                continue
            parents.pop()
            if elem.tag != "FlexStatement":
                continue
            count += 1
            piece = _statement(elem, envelope or {}, query, what, staging, seen)
            if parents:
                parents[-1].remove(elem)  # keep memory to one statement
            yield piece
    except ET.ParseError as exc:
        raise StatementUnavailable(
            f"Flex Web Service, {what}: the statement is not well-formed XML ({exc}); nothing after that point "
            "was kept.",
            "Run the fetch again; if it persists, check the query in Client Portal.",
        ) from None
    if envelope is None:
        raise _not_flex(what)
    if count == 0:
        raise StatementUnavailable(
            f"Flex Web Service, {what}: IBKR's answer holds no statement (no FlexStatement element).",
            "Check that the query selects at least one account, and its period.",
        )


def _not_flex(what: str) -> StatementUnavailable:
    return StatementUnavailable(
        f"Flex Web Service, {what}: the answer is not a Flex statement (no FlexQueryResponse).",
        "Run the fetch again; if it persists, check the query in Client Portal.",
    )


def _statement(elem: ET.Element, envelope: dict[str, str], query: str, what: str, staging: Path,
               seen: set[str]) -> Piece:
    account = (elem.get("accountId") or "").strip()
    if not ACCOUNT.fullmatch(account):
        raise StatementUnavailable(
            f"Flex Web Service, {what}: a statement's accountId {account[:40]!r} is not an IBKR account number.",
            "Make sure the query includes the Account Information section with Account ID.",
        )
    start = flex_date(elem.get("fromDate"), what, "fromDate")
    end = flex_date(elem.get("toDate"), what, "toDate")
    name = statement_name(account, query, start, end, "xml")
    if name in seen:
        raise StatementUnavailable(
            f"Flex Web Service, {what}: the answer holds two statements named {name}.", "Report this to IBKR.")
    seen.add(name)
    for attr in VOLATILE:
        elem.attrib.pop(attr, None)
    elem.tail = None
    root = ET.Element("FlexQueryResponse", envelope)
    holder = ET.SubElement(root, "FlexStatements", {"count": "1"})
    holder.text, holder.tail, root.text = "\n", "\n", "\n"
    holder.append(elem)
    elem.tail = "\n"
    data = b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8", xml_declaration=False)
    path = staging / name
    _write(path, data + b"\n")
    holder.remove(elem)
    return Piece(name, path)


def csv_account(source: Path, what: str) -> str:
    """The one account a CSV answer is about (its ClientAccountID column)."""
    with open(source, "rb") as fh:
        text = fh.read(CSV_SNIFF).decode("utf-8-sig", errors="replace")
    accounts: set[str] = set()
    column = None
    for row in csv.reader(io.StringIO(text)):
        for name in CSV_ACCOUNT_COLUMNS:
            if name in row:  # a header row (a CSV answer repeats one per section)
                column = row.index(name)
                break
        else:
            if column is not None and len(row) > column and ACCOUNT.fullmatch(row[column].strip()):
                accounts.add(row[column].strip())
    if len(accounts) != 1:
        found = "no account" if not accounts else f"{len(accounts)} accounts"
        raise StatementUnavailable(
            f"Flex Web Service, {what}: the CSV answer names {found} in a ClientAccountID column, so it cannot be "
            "filed under one account.",
            "Add the Account ID field to the query's sections and select one account per CSV query, or use the "
            "XML format (split per account).",
        )
    return accounts.pop()


def keep_csv(source: Path, query: str, what: str, start: date, end: date, staging: Path) -> Piece:
    """A CSV answer as one statement (renamed, content untouched)."""
    account = csv_account(source, what)
    name = statement_name(account, query, start, end, "csv")
    path = staging / name
    path.unlink(missing_ok=True)
    os.replace(source, path)
    return Piece(name, path)


def looks_like_xml(source: Path) -> bool:
    with open(source, "rb") as fh:
        head = fh.read(512).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"<")

