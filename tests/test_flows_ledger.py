"""The daily flow's coverage artifact and gap alert, and the monthly verify-archive flow (real sshd, local
archive, Prefect's test server)."""

from __future__ import annotations

import json
import os
from datetime import date, timedelta

import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.local_api import startup_timeout
from flows.retrieve import CALENDAR_ARTIFACT_KEY, COVERAGE_ARTIFACT_KEY, retrieve_statements
from flows.verify import VERIFY_ARTIFACT_KEY, verify_archive_flow
from ibreports.calendars import BusinessDays
from ibreports.statements import parse
from tests.configs import sftp_toml
from tests.flowhelpers import artifacts, flow_run_id
from tests.helpers import Receiver


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=startup_timeout()):
        yield


def statement(day: date) -> str:
    return f"U1234567.DailyActivity.{day:%Y%m%d}.{day:%Y%m%d}.xml"


@pytest.fixture
def setup(tmp_path, sshd_factory, sftp_client_key, monkeypatch):
    """A config (local archive, alerts to a receiver) and a server holding two daily statements around a missing day."""
    monkeypatch.setenv("TEST_SSH_PASSPHRASE", sftp_client_key[2])
    server = sshd_factory([sftp_client_key[1]])
    outgoing = server.root / "outgoing"
    outgoing.mkdir(exist_ok=True)
    days = BusinessDays("NYSE").between(date.today() - timedelta(days=20), date.today() - timedelta(days=4))
    first, missing, last = days[-3:]
    for day in (first, last):
        (outgoing / statement(day)).write_bytes(f"<FlexQueryResponse>{day}</FlexQueryResponse>\n".encode())
    receiver = Receiver()
    config = tmp_path / "ibreports.toml"
    config.write_text(sftp_toml(server, sftp_client_key, server.write_known_hosts(tmp_path / "known_hosts"))
                      + f'\n[archive]\nurl = "{tmp_path / "archive"}"\n\n[alerts]\nurls = ["{receiver.url}"]\n')
    yield config, missing, receiver, tmp_path / "archive"
    receiver.close()


def test_the_daily_flow_publishes_coverage_and_alerts_once_per_new_gap(setup):
    config, missing, receiver, _archive = setup
    state = retrieve_statements(config=str(config), return_state=True)
    assert state.is_completed(), state.message
    (summary,) = artifacts(flow_run_id(state), COVERAGE_ARTIFACT_KEY)
    assert "1 kind(s), 2 statement(s), 1 gap(s) (1 new)" in summary.data
    assert f"U1234567 DailyActivity: {missing} (1 business day(s)) purged" in summary.data
    [message] = receiver.messages
    assert "new coverage gap" in json.dumps(message) and str(missing) in json.dumps(message)

    again = retrieve_statements(config=str(config), return_state=True)
    assert again.is_completed(), again.message
    (summary,) = artifacts(flow_run_id(again), COVERAGE_ARTIFACT_KEY)
    assert "1 gap(s) (0 new)" in summary.data
    assert len(receiver.messages) == 1  # the same gap is not alerted twice


def test_the_daily_flow_publishes_the_coverage_calendar(setup):
    config, missing, _receiver, archive = setup
    state = retrieve_statements(config=str(config), return_state=True)
    assert state.is_completed(), state.message
    (calendar,) = artifacts(flow_run_id(state), CALENDAR_ARTIFACT_KEY)
    assert "**U1234567 DailyActivity** (daily, 1 gap(s))" in calendar.data
    rows = {line[:7]: line[8:] for line in calendar.data.splitlines() if line[:4].isdigit()}

    def drawn(day: date) -> str:
        return rows[f"{day:%Y-%m}"][day.day - 1]

    held = [parse(p.name, 0).period_start for p in (archive / "statements").rglob("*.xml")]
    assert drawn(missing) == "x" and [drawn(d) for d in held] == ["#", "#"]


def test_a_coverage_failure_is_one_line_and_never_fails_a_good_run(setup, monkeypatch, caplog):
    config, _missing, receiver, archive = setup

    def broken(*_args, **_kwargs):
        raise OverflowError("date value out of range")

    monkeypatch.setattr("ibreports.coverage_publish.collect_coverage", broken)  # a bug inside coverage
    state = retrieve_statements(config=str(config), return_state=True)
    assert state.is_completed(), state.message
    assert len(list((archive / "statements").rglob("*.xml"))) == 2  # the run itself did its work
    (summary,) = artifacts(flow_run_id(state), COVERAGE_ARTIFACT_KEY)
    assert "Not computed: unexpected OverflowError: date value out of range" in summary.data
    lines = [r.getMessage() for r in caplog.records if "coverage could not be computed" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and receiver.messages == []


def test_the_verify_flow_passes_then_fails_on_a_changed_statement(setup):
    config, _missing, _receiver, archive = setup
    assert retrieve_statements(config=str(config), return_state=True).is_completed()
    state = verify_archive_flow(config=str(config), return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["ok"] == 2 and state.result()["mismatch"] == []

    [changed] = sorted((archive / "statements").rglob("*.xml"))[:1]
    os.chmod(changed, 0o600)
    changed.write_bytes(b"<FlexQueryResponse>rewritten</FlexQueryResponse>\n")
    state = verify_archive_flow(config=str(config), return_state=True)
    assert state.is_failed() and "1 mismatch" in state.message
    (artifact,) = artifacts(flow_run_id(state), VERIFY_ARTIFACT_KEY)
    assert f"MISMATCH {changed.relative_to(archive).as_posix()}" in artifact.data
