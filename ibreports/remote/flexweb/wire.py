"""IBKR's status answer (``FlexStatementResponse``): recognise it, read it, bound what we repeat of it."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ...errors import ConnectionFailure
from .redact import scrub

STATUS_MAX = 64 * 1024  # bytes: a status answer is a few hundred bytes
_STATUS_HEAD = re.compile(rb"^(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*\?>\s*)?(?:<!--.*?-->\s*)*<FlexStatementResponse\b", re.S)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


@dataclass(frozen=True)
class Status:
    """What a FlexStatementResponse says: Success with a reference, or an error code."""

    status: str
    reference: str = ""
    url: str = ""
    code: int | None = None
    message: str = ""


def is_status(head: bytes) -> bool:
    """True when a body starts like IBKR's status answer (not a statement)."""
    return bool(_STATUS_HEAD.match(head))


def reject_dtd(body: bytes, where: str) -> None:
    """Flex documents carry no DTD; one would only serve entity tricks, so it is refused."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise ConnectionFailure(
            f"{where} answered with an XML document type declaration, which IBKR never sends; it was not read.",
            "Check the source's url and any proxy between this machine and IBKR.",
        )


def shown(text: str | None, limit: int = 200) -> str:
    """Server text made safe to repeat: one line, bounded, no token."""
    text = _CONTROL.sub(" ", text or "").strip()
    text = scrub(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_status(body: bytes, where: str) -> Status:
    """Read a FlexStatementResponse; ConnectionFailure when it is not one."""
    reject_dtd(body, where)
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        root = None
    if root is None or root.tag != "FlexStatementResponse":
        raise ConnectionFailure(
            f"{where} answered with something other than a Flex Web Service response.",
            "Check the source's url (the SendRequest endpoint, or leave it out for IBKR's) and any proxy or "
            "captive portal between this machine and IBKR; run again later if IBKR was under maintenance.",
        )

    # Tags and attributes are matched whatever their case: some IBKR answers say <url>, not <Url>.
    children = {child.tag.lower(): child for child in reversed(list(root)) if isinstance(child.tag, str)}
    attrs = {k.lower(): v for k, v in root.attrib.items()}

    def text(tag: str) -> str:
        node = children.get(tag.lower())
        return (node.text or "").strip() if node is not None else ""

    raw_code = text("ErrorCode") or attrs.get("errorcode", "")
    code = int(raw_code) if raw_code.strip().isdigit() else None
    return Status(
        status=text("Status"),
        reference=text("ReferenceCode"),
        url=text("Url"),
        code=code,
        message=shown(text("ErrorMessage") or attrs.get("errormessage", "")),
    )
