"""Keep the Flex token out of every log line.

IBKR takes the token in the query string (``?t=...``), and httpx logs each request's
URL (INFO, and more at DEBUG through httpcore). A filter on those loggers rewrites any
record that shows a token in use or a ``t=`` parameter; our own messages never hold
the token in the first place (:func:`scrub` guards text that came from the server).
"""

from __future__ import annotations

import logging
import re
import threading

HTTP_LOGGERS = ("httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy")
MASK = "********"
_T_PARAM = re.compile(r"([?&;]t=)[^&\s'\"<>)]+")

_tokens: set[str] = set()
_lock = threading.Lock()


def scrub(text: str) -> str:
    """``text`` with every known token and any ``t=`` URL parameter masked."""
    with _lock:
        tokens = sorted(_tokens, key=len, reverse=True)
    for token in tokens:
        if token in text:
            text = text.replace(token, MASK)
    return _T_PARAM.sub(lambda m: m.group(1) + MASK, text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with :func:`scrub` (keeps the record, never drops it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: leave it to the handler's own error path
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def protect(token: str) -> None:
    """Register ``token`` for masking and make sure every HTTP logger has the filter.

    Checked at each call, not once: a logging set-up run later (Prefect's, a user's
    dictConfig) may have replaced a logger's filters."""
    with _lock:
        if token:
            _tokens.add(token)
        for name in HTTP_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, RedactingFilter) for f in logger.filters):
                logger.addFilter(RedactingFilter())
