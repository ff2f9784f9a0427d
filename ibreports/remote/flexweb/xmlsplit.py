"""A Flex XML answer split into one Flex document per ``FlexStatement``, read as a stream.

expat reads the answer in 64 KiB chunks and each statement is written out as it is read,
so memory stays bounded by the document's nesting depth, not by a statement's size (the
tree the old splitter built held about 8.5x the statement). A document type declaration
or an entity declaration anywhere in the document is refused (IBKR sends neither; they
only serve entity expansion tricks), and so is any entity reference other than XML's five.

Each piece is written byte for byte as ``xml.etree.ElementTree.tostring`` wrote it before
(same escaping, ``<tag />`` for an empty element, comments and processing instructions
dropped), so statements archived before this module existed are recognised, not conflicts.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
import xml.etree.ElementTree as ET
import xml.parsers.expat as expat
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ...errors import StatementUnavailable
from ...files import create_private
from ...statements import ACCOUNT
from .split import Piece, flex_date, statement_name

CHUNK = 64 * 1024
VOLATILE = ("whenGenerated",)
ROOT, STATEMENT = "FlexQueryResponse", "FlexStatement"

# ElementTree's own escaping: the bytes must stay those ET.tostring wrote (see above).
_attr = ET._escape_attrib  # type: ignore[attr-defined]
_text = ET._escape_cdata  # type: ignore[attr-defined]


class EntityRefused(StatementUnavailable):
    """The answer declares a DTD or an entity: never read further."""


@dataclass(frozen=True)
class Expect:
    """What the request asked for: the answer's periods must lie inside [start, end] (None: its own)."""

    start: date | None = None
    end: date | None = None


def refuse_entities(parser: expat.XMLParserType, where: str) -> None:
    """Make ``parser`` raise on a DOCTYPE or an entity declaration wherever it appears."""

    def refuse(*_args: object) -> None:
        raise EntityRefused(
            f"{where}: the answer holds an XML document type or entity declaration, which IBKR never sends; "
            "it was not read.",
            "Check the source's url and any proxy between this machine and IBKR.",
        )

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.NotationDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)


class _Splitter:
    """expat callbacks: the envelope, then each FlexStatement streamed into its own file."""

    def __init__(self, query: str | None, what: str, staging: Path, expect: Expect,
                 on_query: Callable[[str], str] | None) -> None:
        self.query, self.what, self.staging, self.expect = query, what, staging, expect
        self.on_query = on_query
        self.envelope: dict[str, str] | None = None
        self.depth = 0
        self.inner = 0  # depth inside the current statement (0: not inside one)
        self.out: BinaryIO | None = None
        self.path: Path | None = None
        self.name = ""
        self.open_tag = False  # a start tag written without its closing '>' yet
        self.done: list[Piece] = []
        self.seen: set[str] = set()
        self.count = 0

    def start(self, tag: str, attrs: list[str]) -> None:
        self.depth += 1
        if self.envelope is None:
            if tag != ROOT:
                raise _not_flex(self.what)
            self.envelope = dict(zip(attrs[::2], attrs[1::2]))
            if self.on_query is not None:
                self.query = self.on_query(self.envelope.get("queryName", ""))
            return
        if self.inner:
            self.inner += 1
            if self.inner == 2 and tag == "AccountInformation":
                self._same_account(dict(zip(attrs[::2], attrs[1::2])).get("accountId"))
            self._close_tag()
            self._start_tag(tag, attrs)
            return
        if tag == STATEMENT:
            self._begin(dict(zip(attrs[::2], attrs[1::2])), attrs)

    def _begin(self, attrib: dict[str, str], attrs: list[str]) -> None:
        what = self.what
        account = (attrib.get("accountId") or "").strip()
        if not ACCOUNT.fullmatch(account):
            raise StatementUnavailable(
                f"Flex Web Service, {what}: a statement's accountId {account[:40]!r} is not an IBKR account number.",
                "Make sure the query includes the Account Information section with Account ID.",
            )
        start = flex_date(attrib.get("fromDate"), what, "fromDate")
        end = flex_date(attrib.get("toDate"), what, "toDate")
        exp = self.expect
        if exp.start is not None and exp.end is not None and not (exp.start <= start <= end <= exp.end):
            raise StatementUnavailable(
                f"Flex Web Service, {what}: IBKR's answer holds {account}'s statement for {start}..{end}, not for "
                f"the dates asked; it was not archived.",
                "Run the fetch again; if it persists, check the query's Period in Client Portal and report the "
                "answer to IBKR.",
            )
        name = statement_name(account, self.query or "", start, end, "xml")
        if name in self.seen:
            raise StatementUnavailable(
                f"Flex Web Service, {what}: the answer holds two statements named {name}.", "Report this to IBKR.")
        self.seen.add(name)
        self.count += 1
        self.name, self.path = name, self.staging / name
        self.path.unlink(missing_ok=True)
        self.out = os.fdopen(create_private(self.path), "wb", buffering=CHUNK)
        head = "".join(f' {k}="{_attr(v)}"' for k, v in (self.envelope or {}).items())
        self.out.write(f'<?xml version="1.0" encoding="UTF-8"?>\n<{ROOT}{head}>\n<FlexStatements count="1">\n'
                       .encode())
        kept = [x for k, v in zip(attrs[::2], attrs[1::2]) if k not in VOLATILE for x in (k, v)]
        self.inner = 1
        self._start_tag(STATEMENT, kept)

    def _same_account(self, named: str | None) -> None:
        """The statement's AccountInformation is about the account the statement is filed under."""
        account = self.name.split(".", 1)[0]
        if named is not None and named.strip() != account:
            raise StatementUnavailable(
                f"Flex Web Service, {self.what}: the statement filed as {account}'s holds the account information "
                f"of {named.strip()[:40]!r}; it was not archived.",
                "Run the fetch again; if it persists, report the answer to IBKR.",
            )

    def _start_tag(self, tag: str, attrs: list[str]) -> None:
        assert self.out is not None
        self.out.write(("<" + tag + "".join(f' {k}="{_attr(v)}"' for k, v in zip(attrs[::2], attrs[1::2])))
                       .encode())
        self.open_tag = True

    def _close_tag(self) -> None:
        if self.open_tag:
            assert self.out is not None
            self.out.write(b">")
            self.open_tag = False

    def text(self, data: str) -> None:
        if self.inner and data:
            self._close_tag()
            assert self.out is not None
            self.out.write(_text(data).encode())

    def end(self, tag: str) -> None:
        self.depth -= 1
        if not self.inner:
            return
        assert self.out is not None
        if self.open_tag:
            self.out.write(b" />")
            self.open_tag = False
        else:
            self.out.write(f"</{tag}>".encode())
        self.inner -= 1
        if self.inner == 0:
            self.out.write(f"\n</FlexStatements>\n</{ROOT}>\n".encode())
            self.out.close()
            self.out = None
            assert self.path is not None
            self.done.append(Piece(self.name, self.path))
            self.path = None

    def abandon(self) -> None:
        """Remove the statement being written (an error stopped it half-way)."""
        if self.out is not None:
            self.out.close()
            self.out = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


@contextmanager
def _abandoning(state: _Splitter) -> Iterator[None]:
    try:
        yield
    finally:  # an error, or a caller that stopped reading: no half-written statement stays
        state.abandon()


def split_xml(source: Path, query: str | None, what: str, staging: Path, expect: Expect = Expect(),
              on_query: Callable[[str], str] | None = None) -> Iterator[Piece]:
    """Each FlexStatement of ``source`` as its own Flex document in ``staging``, as it is read.

    ``query``: the query part of the names; ``on_query`` (when given) is called with the answer's
    ``queryName`` and returns the query part to use (and may raise)."""
    where = f"Flex Web Service, {what}"
    state = _Splitter(query, what, staging, expect, on_query)
    parser = expat.ParserCreate()
    parser.ordered_attributes = True
    parser.buffer_text = True
    parser.StartElementHandler = state.start
    parser.EndElementHandler = state.end
    parser.CharacterDataHandler = state.text
    refuse_entities(parser, where)
    failure: BaseException | None = None
    with open(source, "rb") as fh, _abandoning(state):
        while failure is None:
            chunk = fh.read(CHUNK)
            try:
                parser.Parse(chunk, not chunk)
            except expat.ExpatError as exc:
                failure = StatementUnavailable(
                    f"{where}: the statement is not well-formed XML ({expat.ErrorString(exc.code)}: line "
                    f"{exc.lineno}, column {exc.offset}); nothing after that point was kept.",
                    "Run the fetch again; if it persists, check the query in Client Portal.",
                )
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the finished pieces
                failure = exc
            done, state.done = state.done, []
            yield from done
            if not chunk:
                break
    if failure is not None:
        raise failure
    if state.envelope is None:
        raise _not_flex(what)
    if state.count == 0:
        raise StatementUnavailable(
            f"Flex Web Service, {what}: IBKR's answer holds no statement (no FlexStatement element).",
            "Check that the query selects at least one account, and its period.",
        )


def _not_flex(what: str) -> StatementUnavailable:
    return StatementUnavailable(
        f"Flex Web Service, {what}: the answer is not a Flex statement (no FlexQueryResponse).",
        "Run the fetch again; if it persists, check the query in Client Portal.",
    )
