"""The Flex Web Service client against the emulator: two steps, every IBKR code, TLS, malformed answers."""

from __future__ import annotations

import time

import pytest

from ibreports.errors import AuthenticationError, ConfigError, ConnectionFailure, RemoteFileError
from ibreports.remote.flexweb.codes import CODES
from tests.fixtures.flexweb import BASE
from tests.flexsource import flex_remote


def produce(emulator, token, queries, tmp_path, since=None, until=None, **kw):
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    with flex_remote(emulator, token, queries, **kw) as remote:
        return list(remote.produce(since, until, staging))


def test_two_step_protocol_fetches_the_statement(flexweb, tmp_path):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"])
    [made] = produce(flexweb, token, [query], tmp_path)
    paths = [h.path.rsplit("/", 1)[-1] for h in flexweb.hits]
    assert paths == ["SendRequest", "GetStatement"]
    send, get = flexweb.hits
    assert send.params["q"] == query.id and send.params["v"] == "3" and send.params["t"] == token
    assert "fd" not in send.params  # no dates: the query's own period
    assert get.params["q"] in flexweb.references and get.params["v"] == "3"
    assert made.name.startswith("U1234567.DailyActivity.") and made.name.endswith(".xml")


@pytest.mark.parametrize("polls", [1, 4])
def test_statement_still_generating_is_polled_until_ready(flexweb, tmp_path, polls):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"], generation_polls=polls)
    [made] = produce(flexweb, token, [query], tmp_path)
    assert flexweb.answers(token) == ["ok"] + ["1019"] * polls + ["ok"]
    assert made.size > 0


def test_generation_delay_in_seconds_is_waited_out(flexweb, tmp_path):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"], generation_seconds=0.3)
    [made] = produce(flexweb, token, [query], tmp_path)
    assert flexweb.answers(token)[-1] == "ok" and made.size > 0


WAIT_ON_POLL = [1004, 1005, 1006, 1007, 1008, 1019, 1021]
WAIT_ON_SEND = [1001, 1009]


@pytest.mark.parametrize("code", WAIT_ON_POLL)
def test_try_again_codes_on_getstatement_are_polled_again(flexweb, tmp_path, code):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"], poll_codes=[code, code])
    [made] = produce(flexweb, token, [query], tmp_path)
    assert flexweb.answers(token) == ["ok", str(code), str(code), "ok"]
    assert made.size > 0


@pytest.mark.parametrize("code", WAIT_ON_SEND)
def test_could_not_generate_on_getstatement_asks_for_a_new_statement(flexweb, tmp_path, code):
    # 1001/1009 say this reference will not be made: polling it again would only repeat the answer.
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"], poll_codes=[code])
    [made] = produce(flexweb, token, [query], tmp_path)
    assert flexweb.answers(token) == ["ok", str(code), "ok", "ok"]
    assert [h.path.rsplit("/", 1)[-1] for h in flexweb.hits] == ["SendRequest", "GetStatement"] * 2
    first, second = (h.params["q"] for h in flexweb.hits if h.path.endswith("GetStatement"))
    assert first != second and made.size > 0


@pytest.mark.parametrize("code", WAIT_ON_SEND)
def test_try_again_codes_on_sendrequest_send_it_again(flexweb, tmp_path, code):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"], send_codes=[code])
    [made] = produce(flexweb, token, [query], tmp_path)
    assert flexweb.answers(token) == [str(code), "ok", "ok"]
    assert [h.path.rsplit("/", 1)[-1] for h in flexweb.hits] == ["SendRequest", "SendRequest", "GetStatement"]


@pytest.mark.parametrize("code, error", [(1019, RemoteFileError), (1004, RemoteFileError),
                                         (1009, ConnectionFailure), (1021, ConnectionFailure)])
def test_try_again_codes_give_up_at_the_poll_time_limit(flexweb, tmp_path, code, error):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"], poll_codes=[code] * 10_000)
    with pytest.raises(error) as caught:
        produce(flexweb, token, [query], tmp_path, poll_timeout=1.0, poll_interval=0.05)
    assert f"error {code}" in str(caught.value) and "after waiting" in str(caught.value)
    assert caught.value.remedy
    assert len(flexweb.hits) > 3  # it did keep asking before giving up


FINAL = {
    1003: RemoteFileError, 1010: ConfigError, 1011: AuthenticationError, 1012: AuthenticationError,
    1013: AuthenticationError, 1014: ConfigError, 1015: AuthenticationError, 1016: ConfigError,
    1017: RemoteFileError, 1020: ConfigError,
}


def _provoke(flexweb, code):
    """A token and query for which the emulator answers ``code`` the way IBKR would."""
    token = flexweb.add_token()
    query = flexweb.add_query("DailyActivity", ["U1234567"])
    if code == 1010:
        query.legacy = True
    elif code == 1011:
        token.active = False
    elif code == 1012:
        token.expires = time.time() - 1
    elif code == 1013:
        token.allowed_ip = "203.0.113.7"
    elif code == 1014:
        query.id = "999999"  # the config names a query the emulator does not know
    elif code == 1015:
        token = flexweb.add_token()
        del flexweb.tokens[token.value]
    elif code == 1017:
        query.poll_codes = [1017]
    else:
        query.send_codes = [code]
    return token.value, query


@pytest.mark.parametrize("code", sorted(FINAL))
def test_final_codes_map_to_our_errors_with_a_remedy_and_are_not_retried(flexweb, tmp_path, code):
    token, query = _provoke(flexweb, code)
    with pytest.raises(FINAL[code]) as caught:
        produce(flexweb, token, [query], tmp_path)
    err = caught.value
    assert f"error {code}" in err.message and err.remedy == CODES[code].remedy and err.code == code
    assert flexweb.answers(token).count(str(code)) == 1  # asked once: retrying cannot help


def test_remedies_name_the_client_portal_steps():
    assert "Performance & Reports > Flex Queries" in CODES[1012].remedy
    assert "Flex Web Service" in CODES[1012].remedy
    assert "public IP" in CODES[1013].remedy and "allowed list" in CODES[1013].remedy
    assert set(CODES) >= {1003, *range(1004, 1022)} - {1002}
    # One statement that could not be made fails that statement (exit 1), not the source as unreachable.
    assert all(CODES[c].error.source_exit_code == 1 for c in (1003, 1004, 1017, 1019))


def test_an_expired_token_stops_the_run_at_once(flexweb, tmp_path):
    token = flexweb.add_token(expires=time.time() - 1).value
    queries = [flexweb.add_query(f"Q{i}", ["U1234567"]) for i in range(3)]
    with pytest.raises(AuthenticationError):
        produce(flexweb, token, queries, tmp_path)
    assert len(flexweb.hits) == 1  # the other queries were not tried with a dead token


def test_ip_restriction_error_tells_to_add_the_public_ip(flexweb, tmp_path):
    token = flexweb.add_token(allowed_ip="198.51.100.23").value
    query = flexweb.add_query("DailyActivity", ["U1234567"])
    with pytest.raises(AuthenticationError) as caught:
        produce(flexweb, token, [query], tmp_path)
    assert caught.value.exit_code == 3
    assert "IP" in caught.value.message and "allowed list" in caught.value.remedy


def test_untrusted_certificate_is_refused_before_any_request(flexweb, tmp_path, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE")  # the system's CAs do not hold the emulator's private CA
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"])
    with pytest.raises(ConnectionFailure) as caught:
        produce(flexweb, token, [query], tmp_path)
    assert "did not verify" in caught.value.message and "SSL_CERT_FILE" in caught.value.remedy
    assert flexweb.hits == []


def test_a_bad_ssl_cert_file_is_a_configuration_error(flexweb, tmp_path, monkeypatch):
    bogus = tmp_path / "not-a-bundle.pem"
    bogus.write_text("hello")
    monkeypatch.setenv("SSL_CERT_FILE", str(bogus))
    token = flexweb.add_token().value
    with pytest.raises(ConfigError, match="SSL_CERT_FILE"):
        produce(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])], tmp_path)


@pytest.mark.parametrize("fault, error, text", [
    ("html", ConnectionFailure, "something other than a Flex Web Service response"),
    ("garbage", ConnectionFailure, "something other than a Flex Web Service response"),
    ("doctype", ConnectionFailure, "document type declaration"),
    ("huge-status", ConnectionFailure, "oversized"),
    ("no-reference", ConnectionFailure, "without a reference code"),
    ("http404", ConfigError, "HTTP 404"),
])
def test_malformed_sendrequest_answers_are_clear_errors(flexweb, tmp_path, fault, error, text):
    token = flexweb.add_token().value
    flexweb.faults.append(fault)
    with pytest.raises(error) as caught:
        produce(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])], tmp_path)
    assert text in caught.value.message


def test_a_getstatement_url_on_another_domain_is_never_used(flexweb, tmp_path, caplog):
    # The statement comes from the documented endpoint on the configured host; the foreign <Url> gets nothing.
    token = flexweb.add_token().value
    flexweb.faults.append("foreign-url")
    [made] = produce(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])], tmp_path)
    assert made.size > 0
    assert [h.path for h in flexweb.hits] == [f"{BASE}/SendRequest", f"{BASE}/GetStatement"]


@pytest.mark.parametrize("fault", ["http500", "drop"])
def test_a_transient_http_failure_is_retried(flexweb, tmp_path, fault):
    token = flexweb.add_token().value
    flexweb.faults.append(fault)
    [made] = produce(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])], tmp_path)
    assert made.size > 0 and len(flexweb.hits) == 3


def test_repeated_server_errors_end_as_a_connection_failure(flexweb, tmp_path):
    token = flexweb.add_token().value
    flexweb.faults.extend(["http500"] * 3)
    with pytest.raises(ConnectionFailure, match="HTTP 500"):
        produce(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])], tmp_path)
    assert len(flexweb.hits) == 3


def test_a_server_slower_than_the_timeout_is_retried(flexweb, tmp_path):
    token = flexweb.add_token().value
    flexweb.slow_seconds = 2.0
    flexweb.faults.append("slow")
    [made] = produce(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])], tmp_path, timeout=0.5)
    assert made.size > 0 and flexweb.hits[0].answer == "slow"


@pytest.mark.parametrize("body, text", [
    (b"", "is empty"),
    (b'<FlexQueryResponse queryName="Q" type="AF"><FlexStatements count="1"><FlexStatement accountId="U1"',
     "not well-formed"),
    (b"<html><body>Please log in</body></html>", "not a Flex statement"),
    (b'<FlexQueryResponse queryName="Q"><FlexStatements count="0"></FlexStatements></FlexQueryResponse>',
     "holds no statement"),
    (b'<FlexQueryResponse><FlexStatements count="1"><FlexStatement accountId="-" fromDate="20261102" '
     b'toDate="20261102"/></FlexStatements></FlexQueryResponse>', "not an IBKR account number"),
])
def test_malformed_statements_are_refused(flexweb, tmp_path, body, text):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"], body=body)
    with pytest.raises(RemoteFileError) as caught:
        produce(flexweb, token, [query], tmp_path)
    assert text in caught.value.message
    assert not [p for p in (tmp_path / "staging").iterdir()]  # nothing half-made is left in staging


def test_ambiguous_date_format_is_refused_with_the_setting_to_change(flexweb, tmp_path):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"], date_format="%m/%d/%Y")
    with pytest.raises(RemoteFileError) as caught:
        produce(flexweb, token, [query], tmp_path)
    assert "yyyyMMdd" in caught.value.remedy
