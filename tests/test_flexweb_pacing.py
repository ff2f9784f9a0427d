"""IBKR's request limits per token, measured by the emulator: spacing, per-minute cap, 1018 back-off."""

from __future__ import annotations

import threading

import pytest

from ibreports.errors import ConnectionFailure
from ibreports.remote.flexweb.client import FlexClient
from ibreports.remote.flexweb.pacing import Pacer
from tests.flexsource import flex_remote


def client(emulator, token, pacer, **kw) -> FlexClient:
    return FlexClient(token, emulator.url, timeout=5.0, pacer=pacer, **{"poll_interval": 0.01, "poll_timeout": 20.0, **kw})


def test_requests_keep_the_minimum_spacing_and_the_per_window_cap(flexweb, tmp_path):
    flexweb.min_interval, flexweb.per_minute, flexweb.window = 0.25, 4, 2.0
    token = flexweb.add_token().value
    queries = [flexweb.add_query(f"Q{i}", ["U1234567"], generation_polls=1) for i in range(3)]
    with client(flexweb, token, Pacer(0.25, 4, window=2.0)) as c:
        for q in queries:
            c.fetch(q.id, q.name, tmp_path / q.name)
    assert flexweb.answers(token) == ["ok", "1019", "ok"] * 3  # never a 1018
    times = flexweb.times(token)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.25 - flexweb.tolerance
    for t in times:  # any window holds at most 4 requests
        assert sum(1 for u in times if t <= u < t + 2.0 - flexweb.tolerance) <= 4


def test_the_emulator_does_refuse_a_client_that_ignores_the_limits(flexweb, tmp_path):
    """The control for the test above: without pacing the same exchange meets 1018."""
    flexweb.min_interval = 0.25
    token = flexweb.add_token().value
    query = flexweb.add_query("Q", ["U1234567"], generation_polls=3)
    with client(flexweb, token, Pacer(0.0, 100_000)) as c:
        c.fetch(query.id, "Q", tmp_path / "q")
    answers = flexweb.answers(token)
    assert "1018" in answers and answers[-1] == "ok"  # then it backed off and got the statement
    assert answers.count("1018") <= 4  # it backs off at least a second: no hammering


def test_persistent_1018_ends_as_a_connection_failure_naming_the_limit(flexweb, tmp_path):
    flexweb.per_minute, flexweb.window = 1, 60.0  # another program has used the token's minute
    token = flexweb.add_token().value
    query = flexweb.add_query("Q", ["U1234567"])
    with pytest.raises(ConnectionFailure) as caught:
        with client(flexweb, token, Pacer(0.0, 100_000), poll_timeout=1.5) as c:
            c.fetch(query.id, "query Q", tmp_path / "q")
    assert "error 1018" in caught.value.message and "other program" in caught.value.remedy


def test_two_sources_sharing_a_token_share_its_pacing(flexweb, tmp_path):
    flexweb.min_interval = 0.2
    token = flexweb.add_token().value
    queries = [flexweb.add_query(f"Q{i}", ["U1234567"]) for i in range(4)]
    errors: list[BaseException] = []

    def one(part, qs):
        staging = tmp_path / part
        staging.mkdir()
        try:
            with flex_remote(flexweb, token, qs, min_interval=0.2) as remote:
                list(remote.produce(None, None, staging))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=("a", queries[:2])), threading.Thread(target=one, args=("b", queries[2:]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert "1018" not in flexweb.answers(token) and len(flexweb.hits) == 8
    times = sorted(flexweb.times(token))
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.2 - flexweb.tolerance
