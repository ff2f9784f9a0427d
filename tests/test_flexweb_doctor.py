"""doctor for a flexweb source: service over verified TLS, token, IP restriction, each query."""

from __future__ import annotations

import time

import pytest

from ibreports.doctor.flexweb import check_flexweb
from ibreports.doctor.steps import Checklist, Section
from tests.flexsource import flex_source


def diagnose(emulator, token, queries):
    section = Section("source", "flex", "source flex (flexweb)")
    check_flexweb(flex_source(emulator, token, queries), Checklist(section))
    return {s.name: s for s in section.steps}


def test_all_steps_pass_and_no_statement_is_downloaded(flexweb):
    token = flexweb.add_token().value
    queries = [flexweb.add_query("DailyActivity", ["U1234567"]), flexweb.add_query("Monthly", ["U1234567"])]
    steps = diagnose(flexweb, token, queries)
    assert [(n, s.ok) for n, s in steps.items()] == [
        ("https", True), ("token", True), ("ip", True), ("query DailyActivity", True), ("query Monthly", True)]
    assert not [h for h in flexweb.hits if h.path.endswith("GetStatement")]
    assert token not in repr(steps)


@pytest.mark.parametrize("setup, failed, code, exit_code", [
    ("expired", "token", 1012, 3),
    ("unknown", "token", 1015, 3),
    ("inactive", "token", 1011, 3),
    ("ip", "ip", 1013, 3),
    ("query", "query Broken", 1014, 2),
    ("legacy", "query Broken", 1010, 2),
])
def test_each_failure_is_named_with_its_remedy(flexweb, setup, failed, code, exit_code):
    token = flexweb.add_token()
    good = flexweb.add_query("Good", ["U1234567"])
    broken = flexweb.add_query("Broken", ["U1234567"])
    if setup == "expired":
        token.expires = time.time() - 1
    elif setup == "unknown":
        del flexweb.tokens[token.value]
    elif setup == "inactive":
        token.active = False
    elif setup == "ip":
        token.allowed_ip = "203.0.113.9"
    elif setup == "query":
        broken.id = "424242"
    else:
        broken.legacy = True
    steps = diagnose(flexweb, token.value, [good, broken])
    step = steps[failed]
    assert step.ok is False and f"error {code}" in step.cause and step.fix and step.code == exit_code
    after = list(steps)[list(steps).index(failed) + 1:]
    if failed != "query Broken":
        assert all(steps[n].ok is None for n in after)  # skipped: meaningless after that failure
    else:
        assert steps["query Good"].ok is True and steps["token"].ok and steps["ip"].ok


def test_an_untrusted_certificate_fails_the_https_step(flexweb, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE")
    token = flexweb.add_token().value
    steps = diagnose(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])])
    assert steps["https"].ok is False and "did not verify" in steps["https"].cause
    assert steps["token"].ok is None and flexweb.hits == []


def test_a_url_that_is_not_the_flex_web_service_fails_the_https_step(flexweb):
    token = flexweb.add_token().value
    flexweb.faults.append("html")  # e.g. a captive portal or a wrong url
    steps = diagnose(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])])
    assert steps["https"].ok is False and "something other than a Flex Web Service response" in steps["https"].cause
    assert steps["token"].ok is None


def test_the_old_endpoint_fails_the_https_step_naming_the_documented_url(flexweb):
    from ibreports.remote.flexweb.endpoints import DOCUMENTED_URL
    from tests.fixtures.flexweb import LEGACY

    token = flexweb.add_token().value
    source = flex_source(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])],
                         url=f"{flexweb.base}{LEGACY}.SendRequest")
    section = Section("source", "flex", "source flex (flexweb)")
    check_flexweb(source, Checklist(section))
    steps = {s.name: s for s in section.steps}
    assert steps["https"].ok is False and "old FlexStatementService endpoint" in steps["https"].cause
    assert DOCUMENTED_URL in steps["https"].fix and steps["https"].code == 2
    assert steps["token"].ok is None and flexweb.hits == []  # named at once: nothing was asked


def test_a_query_without_a_name_says_its_statements_take_ibkrs_name(flexweb):
    token = flexweb.add_token().value
    query = flexweb.add_query("Daily Activity", ["U1234567"])
    section = Section("source", "flex", "source flex (flexweb)")
    check_flexweb(flex_source(flexweb, token, [query], names=False), Checklist(section))
    steps = {s.name: s for s in section.steps}
    step = steps[f"query #{query.id}"]
    assert step.ok is True and "as IBKR names the query" in step.detail
