"""The Flex token never reaches a log record, an error, a repr or a produced file."""

from __future__ import annotations

import logging
import time

import pytest

from ibreports.errors import IbreportsError
from tests.flexsource import flex_remote, flex_settings


def test_the_token_is_never_logged_or_shown(flexweb, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)  # every logger at DEBUG: httpx and httpcore log each request
    for name in ("httpx", "httpcore"):  # the CLI quietens httpx; a user's --debug or logging set-up may not
        caplog.set_level(logging.DEBUG, logger=name)
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567", "U7654321"], generation_polls=1)
    shown: list[str] = []

    def attempt(**kw):
        staging = tmp_path / f"s{len(shown)}"
        staging.mkdir()
        try:
            with flex_remote(flexweb, token, [query], **kw) as remote:
                for item in remote.produce(None, None, staging):
                    shown.append(item.path.read_text())
        except IbreportsError as exc:
            shown.extend([str(exc), exc.message, exc.remedy, repr(exc)])
        else:
            shown.append("ok")

    attempt()  # success, with a 1019 poll
    for name in ("httpx", "httpcore.http11", "httpcore.connection"):
        logging.getLogger(name).filters.clear()  # a later logging set-up (Prefect's, dictConfig) dropped them
    flexweb.faults.append("echo-token")  # IBKR's message repeats the token
    attempt()
    flexweb.faults.extend(["http500"] * 3)
    attempt()
    flexweb.faults.append("foreign-url")
    attempt()
    flexweb.tokens[token].expires = time.time() - 1
    attempt()
    monkeypatch.delenv("SSL_CERT_FILE")
    attempt()
    shown.append(repr(flex_settings(flexweb, token, [query])))

    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages + shown if token in m]
    # The filter was exercised on real httpx lines, which carry the URL:
    assert any(r.name == "httpx" and "t=********" in r.getMessage() for r in caplog.records)
    assert any("Token ******** is invalid" in s for s in shown)  # the server's text was scrubbed, not dropped
    assert "ok" in shown and any("error 1012" in s for s in shown)


def test_a_log_line_with_any_t_parameter_is_masked():
    from ibreports.remote.flexweb.redact import scrub

    assert scrub("GET https://h/SendRequest?t=abc123&q=1&v=3") == "GET https://h/SendRequest?t=********&q=1&v=3"
    assert scrub("GET https://h/GetStatement?q=55&t=zz9 \"HTTP/1.1 200 OK\"").count("zz9") == 0
