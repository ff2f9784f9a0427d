"""The Flex Web Service as IBKR runs it: documented endpoints, the <Url> fallback, redirects, Retry-After,
the User-Agent IBKR requires, the old endpoint, reconnects (issue 22)."""

from __future__ import annotations

import http.client
import ssl

import pytest

from ibreports.errors import ConfigError, ConnectionFailure
from ibreports.remote.flexweb import client as flexclient
from ibreports.remote.flexweb.transport import retry_after
from ibreports.remote.flexweb.endpoints import DOCUMENTED_URL, check_endpoint, registrable, same_site
from tests.fixtures.flexweb import BASE, LEGACY, LEGACY_HOST
from tests.flexsource import flex_remote, produce


def paths(emulator) -> list[str]:
    return [h.path for h in emulator.hits]


def test_getstatement_goes_to_the_documented_endpoint_not_the_legacy_host_ibkr_names(flexweb, tmp_path):
    # IBKR's answer names gdcdyn's /Universal/servlet/... (here a host that never resolves): not needed.
    token = flexweb.add_token().value
    [made] = produce(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])], tmp_path / "s")
    assert made.size > 0
    assert paths(flexweb) == [f"{BASE}/SendRequest", f"{BASE}/GetStatement"]
    assert LEGACY_HOST.endswith(".invalid")


def test_the_answers_url_is_the_fallback_and_is_read_whatever_its_case(flexweb, tmp_path, caplog):
    token = flexweb.add_token().value
    flexweb.documented_get = False  # the documented GetStatement path answers 404 here
    flexweb.url_target = "self-legacy"
    flexweb.lowercase_url = True  # <url>, not <Url>
    [made] = produce(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])], tmp_path / "s")
    assert made.size > 0
    assert paths(flexweb) == [f"{BASE}/SendRequest", f"{BASE}/GetStatement", f"{LEGACY}.GetStatement"]
    assert "trying the URL IBKR's answer named" in caplog.text and token not in caplog.text


def test_a_foreign_url_is_no_fallback(flexweb, tmp_path):
    token = flexweb.add_token().value
    flexweb.documented_get = False
    flexweb.url_target = "foreign"
    with pytest.raises(ConnectionFailure) as caught:
        produce(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])], tmp_path / "s")
    assert "HTTP 404" in caught.value.message and "evil.example.net" in caught.value.message
    assert "not HTTPS on the configured host's domain" in caught.value.message
    assert all("evil" not in h.path for h in flexweb.hits) and len(flexweb.hits) == 2


def test_no_usable_getstatement_url_is_a_connection_error_naming_both(flexweb, tmp_path, monkeypatch):
    # IBKR's own case: the <Url> is on IBKR's domain but its host does not resolve (here: under .invalid,
    # admitted as if it were IBKR's, so the real DNS failure is what the fallback meets).
    monkeypatch.setattr(flexclient, "same_site", lambda host, anchor: True)
    token = flexweb.add_token().value
    flexweb.documented_get = False
    with pytest.raises(ConnectionFailure) as caught:
        produce(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])], tmp_path / "s")
    message = caught.value.message
    assert "GetStatement endpoint" in message and "HTTP 404" in message and LEGACY_HOST in message
    assert caught.value.exit_code == 3 and caught.value.remedy and token not in message


@pytest.mark.parametrize("path, says", [
    (f"{LEGACY}.SendRequest", "old FlexStatementService endpoint"),
    ("/AccountManagement/FlexWebService/SendRequestX", "not IBKR's documented"),
    ("/somewhere/else", "not IBKR's documented"),
])
def test_a_url_that_is_not_the_documented_endpoint_is_refused_at_once(flexweb, tmp_path, path, says):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"])
    with pytest.raises(ConfigError) as caught:
        produce(flexweb, token, [query], tmp_path / "s", url=f"{flexweb.base}{path}")
    assert says in caught.value.message and DOCUMENTED_URL in caught.value.remedy
    assert caught.value.exit_code == 2 and flexweb.hits == []  # named before a single request


def test_the_old_endpoint_in_the_emulator_answers_1001_for_ever(flexweb):
    # What a client that did not refuse it would get: 600 s of 1001, then "temporary".
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"])
    for _ in range(3):
        status, body, label = flexweb.answer(f"{LEGACY}.SendRequest", {"t": token, "q": query.id, "v": "3"},
                                             "127.0.0.1", "ibreports")
        assert (status, label) == (200, "1001") and b"<ErrorCode>1001</ErrorCode>" in body


def _raw_get(emulator, path: str, headers: dict[str, str]) -> int:
    ctx = ssl.create_default_context(cafile=str(emulator.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", emulator.port, context=ctx, timeout=5)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_ibkr_refuses_a_request_without_user_agent_and_ours_sends_one(flexweb, tmp_path):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"])
    assert _raw_get(flexweb, f"{BASE}/SendRequest?t={token}&q={query.id}&v=3", {}) == 403
    assert _raw_get(flexweb, f"{BASE}/SendRequest?t={token}&q={query.id}&v=3", {"User-Agent": "Java"}) == 200
    flexweb.hits.clear()
    produce(flexweb, token, [query], tmp_path / "s")
    assert flexweb.hits and all(h.user_agent.startswith("ibreports/") for h in flexweb.hits)


def test_a_403_is_a_connection_error_that_names_the_user_agent(flexweb, tmp_path, monkeypatch):
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"])
    monkeypatch.setattr(flexclient, "USER_AGENT", "")  # as a proxy that strips it would
    with pytest.raises(ConnectionFailure) as caught:
        produce(flexweb, token, [query], tmp_path / "s")
    assert "HTTP 403" in caught.value.message and "User-Agent" in caught.value.remedy


def test_a_redirect_on_the_same_host_is_followed(flexweb, tmp_path):
    token = flexweb.add_token().value
    flexweb.faults.extend([f"redirect {{base}}/moved{BASE}/SendRequest", "none", f"redirect /moved{BASE}/GetStatement"])
    [made] = produce(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])], tmp_path / "s")
    assert made.size > 0
    assert paths(flexweb) == [f"{BASE}/SendRequest", f"/moved{BASE}/SendRequest", f"{BASE}/GetStatement",
                              f"/moved{BASE}/GetStatement"]
    assert all(h.token == token for h in flexweb.hits)  # the token went along, to the same host only


@pytest.mark.parametrize("location", [
    f"http://127.0.0.1:{{port}}{BASE}/SendRequest",  # not HTTPS
    f"https://evil.example.net{BASE}/SendRequest",  # another domain
    f"https://interactivebrokers.com.evil.net{BASE}/SendRequest",  # IBKR's name inside another domain
])
def test_a_redirect_off_https_or_off_the_domain_is_refused(flexweb, tmp_path, location):
    token = flexweb.add_token().value
    flexweb.faults.append("redirect " + location.replace("{port}", str(flexweb.port)))
    with pytest.raises(ConnectionFailure) as caught:
        produce(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])], tmp_path / "s")
    assert "was not followed" in caught.value.message and token not in caught.value.message
    assert not caught.value.retryable  # a Prefect retry would meet the same redirect
    assert len(flexweb.hits) == 1  # nothing was sent after the redirect


def test_redirects_are_bounded(flexweb, tmp_path):
    token = flexweb.add_token().value
    flexweb.faults.extend([f"redirect {{base}}/moved{BASE}/SendRequest"] * 20)
    with pytest.raises(ConnectionFailure, match="redirected more than"):
        produce(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])], tmp_path / "s")
    assert len(flexweb.hits) == flexclient.REDIRECTS_MAX + 1


def test_retry_after_is_honoured(flexweb, tmp_path):
    token = flexweb.add_token().value
    flexweb.faults.append("http429 1")
    [made] = produce(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])], tmp_path / "s")
    assert flexweb.answers(token) == ["http429 1", "ok", "ok"] and made.size > 0
    first, second = flexweb.times(token)[:2]
    assert second - first >= 1.0  # the order of events IBKR asked for, not a timing of ours


def test_a_retry_after_beyond_the_bound_fails_at_once_naming_the_wait(flexweb, tmp_path):
    token = flexweb.add_token().value
    flexweb.faults.append("http429 3600")
    with pytest.raises(ConnectionFailure) as caught:
        produce(flexweb, token, [flexweb.add_query("DailyActivity", ["U1234567"])], tmp_path / "s")
    assert "3600 s" in caught.value.message and "3600 s" in caught.value.remedy
    assert len(flexweb.hits) == 1


def test_retry_after_values():
    assert retry_after("120") == 120.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 30) == 30.0
    assert retry_after("") is None and retry_after("soon") is None and retry_after(None) is None


def test_a_lost_connection_is_tried_again_for_the_reconnect_window(flexweb, tmp_path, monkeypatch):
    monkeypatch.setattr(flexclient, "BACKOFF_CAP", 0.01)
    token = flexweb.add_token().value
    query = flexweb.add_query("DailyActivity", ["U1234567"])
    flexweb.faults.extend(["drop"] * 5)
    with pytest.raises(ConnectionFailure):  # without a window: TRANSPORT_ATTEMPTS, then given up
        produce(flexweb, token, [query], tmp_path / "a")
    assert len(flexweb.hits) == flexclient.TRANSPORT_ATTEMPTS
    flexweb.faults.clear()
    flexweb.faults.extend(["drop"] * 5)
    flexweb.hits.clear()
    staging = tmp_path / "b"
    staging.mkdir()
    with flex_remote(flexweb, token, [query]) as remote:
        [made] = list(remote.produce(None, None, staging, reconnect_minutes=1))
    assert made.size > 0 and [h.answer for h in flexweb.hits] == ["drop"] * 5 + ["ok", "ok"]


@pytest.mark.parametrize("host, anchor, ok", [
    ("gdcdyn.interactivebrokers.com", "ndcdyn.interactivebrokers.com", True),
    ("ndcdyn.interactivebrokers.com", "ndcdyn.interactivebrokers.com", True),
    ("www.interactivebrokers.co.uk", "ndcdyn.interactivebrokers.co.uk", True),
    ("evil.co.uk", "ndcdyn.interactivebrokers.co.uk", False),  # "last two labels" would say co.uk == co.uk
    ("gdcdyn.interactivebrokers.com", "ndcdyn.interactivebrokers.co.uk", False),  # another registrable domain
    ("interactivebrokers.com.evil.net", "ndcdyn.interactivebrokers.com", False),
    ("evil-interactivebrokers.com", "ndcdyn.interactivebrokers.com", False),
    ("127.0.0.2", "127.0.0.1", False),
    ("127.0.0.1", "127.0.0.1", True),
    ("proxy2.corp.example", "proxy.corp.example", False),  # not IBKR's: only the configured host itself
])
def test_which_hosts_may_receive_the_token(host, anchor, ok):
    assert same_site(host, anchor) is ok


def test_registrable_domains():
    assert registrable("NDCDYN.InteractiveBrokers.com.") == "interactivebrokers.com"
    assert registrable("a.b.interactivebrokers.com.au") == "interactivebrokers.com.au"
    assert registrable("example.com") is None


def test_the_documented_url_passes_the_endpoint_check():
    check_endpoint(DOCUMENTED_URL)
    check_endpoint(DOCUMENTED_URL + "/")
