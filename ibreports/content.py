"""A statement's content checked against its name before it is archived (issue 20).

Flex XML says which account and period it holds: the ``FlexStatement`` element's ``accountId``,
``fromDate`` and ``toDate``. A statement whose content names another account or period than its
file name is refused (reason code ``mismatch``, both values named), so it is never filed under the
wrong account or day. Only the head of the document is read: expat, no DTD and no entity
declarations (reading stops at either), in 64 KiB chunks, at most ``HEAD_BYTES``, stopping at the
first ``FlexStatement`` start tag; memory stays bounded whatever the file's size.

No verdict (the statement is archived as it is) when the content does not say: CSV, a zip, a PDF,
XML that is not a ``FlexQueryResponse``, no ``FlexStatement`` within the head, a date in a format
that cannot be read. A response with several ``FlexStatement`` elements (an advisor's multi-account
statement, named by the master account) has its dates checked, not its account.
"""

from __future__ import annotations

import xml.parsers.expat
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from .errors import IbreportsError
from .statements import Statement

HEAD_BYTES = 1 << 20
CHUNK = 64 << 10
ROOT = "FlexQueryResponse"
# Flex date formats; with the slashed ones the day and month may be either way round.
_FORMATS = ("%Y%m%d", "%Y-%m-%d", "%Y/%m/%d", "%d-%b-%y", "%d-%b-%Y", "%m/%d/%Y", "%d/%m/%Y", "%m/%d/%y", "%d/%m/%y")


class ContentMismatch(IbreportsError):
    """The statement's content names another account or period than its file name (exit 1)."""

    reason = "mismatch"


@dataclass(frozen=True)
class Head:
    """What the first FlexStatement start tag says (attribute values as written)."""

    account: str
    from_date: str
    to_date: str
    statements: int | None  # FlexStatements count="N", when given


class _Stop(Exception):
    def __init__(self, head: Head | None) -> None:
        self.head = head


def read_head(path: Path, limit: int = HEAD_BYTES) -> Head | None:
    """The first FlexStatement's attributes, or None when the head of ``path`` does not hold one."""
    count: list[int | None] = [None]
    seen_root = [False]

    def start(name: str, attrs: dict[str, str]) -> None:
        if not seen_root[0]:
            if name != ROOT:
                raise _Stop(None)
            seen_root[0] = True
        elif name == "FlexStatements":
            text = (attrs.get("count") or "").strip()
            count[0] = int(text) if text.isdigit() and len(text) < 10 else None
        elif name == "FlexStatement":
            raise _Stop(Head((attrs.get("accountId") or "").strip(), (attrs.get("fromDate") or "").strip(),
                             (attrs.get("toDate") or "").strip(), count[0]))

    def refuse(*_args) -> None:  # Flex documents carry no DTD; one would only serve entity tricks
        raise _Stop(None)

    parser = xml.parsers.expat.ParserCreate()
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = start
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    try:
        with open(path, "rb") as fh:
            first = fh.read(CHUNK)
            if not first.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
                return None  # not XML: CSV, zip, PDF
            read, chunk = 0, first
            while chunk and read < limit:
                read += len(chunk)
                parser.Parse(chunk, False)
                chunk = fh.read(min(CHUNK, limit - read))
    except _Stop as stop:
        return stop.head
    except (xml.parsers.expat.ExpatError, OSError, ValueError):
        return None
    return None


def _dates(text: str) -> set[date]:
    found = set()
    for fmt in _FORMATS:
        try:
            found.add(datetime.strptime(text, fmt).date())
        except ValueError:
            continue
    return found


def mismatches(head: Head, st: Statement) -> list[str]:
    """What the content says that its name does not, one phrase each (empty: they agree, or it cannot tell)."""
    out = []
    if (head.statements in (None, 1)) and head.account and st.account and head.account != st.account:
        out.append(f"accountId {head.account[:40]!r} where the name says {st.account}")
    for attr, text, named in (("fromDate", head.from_date, st.period_start), ("toDate", head.to_date, st.period_end)):
        candidates = _dates(text)
        if candidates and named is not None and named not in candidates:
            out.append(f"{attr} {text[:40]!r} where the name says {named:%Y%m%d}")
    return out


def check(path: Path, st: Statement) -> None:
    """ContentMismatch when the statement at ``path`` says another account or period than ``st``'s name."""
    if not st.parsed:
        return  # a name without account and period: nothing to contradict
    head = read_head(path)
    wrong = mismatches(head, st) if head is not None else []
    if wrong:
        raise ContentMismatch(
            f"mismatch: the statement's content (FlexStatement) says {'; '.join(wrong)}; it was not archived, so "
            f"nothing is filed under {st.account} {st.period_start}..{st.period_end} that belongs elsewhere.",
            "Ask IBKR to redeliver it under its right name (or remove the file from the server); "
            "if the encrypted original was kept, it is in the archive under encrypted/.",
        )
