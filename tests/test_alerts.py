"""Alerts through apprise to a local HTTP receiver: right causes, right content, no secrets."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ibreports.alerts import build_alerts, down_since, send_alerts
from ibreports.archive import open_archive
from ibreports.cli import main
from ibreports.config import load_config, parse_config
from ibreports.pipeline import fetch
from ibreports.report import FileOutcome, RunReport
from tests.fixtures.pgpkeys import encrypt_bytes
from tests.helpers import TOKEN, Receiver

DAY = 86400
XML = b'<FlexQueryResponse queryName="DailyActivity" type="AF"><FlexStatements count="0"/></FlexQueryResponse>\n'


@pytest.fixture(autouse=True)
def quiet_urllib3(monkeypatch):
    """urllib3 logs request paths at DEBUG; the CLI keeps it at WARNING even with --debug."""
    monkeypatch.setattr(logging.getLogger("urllib3"), "level", logging.WARNING)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def alert_config(tmp_path: Path, urls: list[str], extra: str = "") -> str:
    return f"""
[alerts]
urls = {json.dumps(urls)}
unreachable_days = 2

[archive]
url = "{tmp_path / 'archive'}"
{extra}"""


def outcome(name: str, result: str, reason: str = "", days_left: int = 50) -> FileOutcome:
    return FileOutcome(source="ibkr-sftp", name=name, size=10, mtime=time.time(), account="U1234567",
                       statement_date="2026-11-20", outcome=result, reason=reason, days_left=days_left)


def test_failed_run_and_files_at_risk_from_a_real_run(tmp_path, receiver, monkeypatch, caplog,
                                                      sshd_factory, sftp_client_key, pgp_key):
    """A corrupt delivery and a file about to be purged, fetched for real, alerted on."""
    caplog.set_level(logging.DEBUG)
    server = sshd_factory([sftp_client_key[1]])
    outgoing = server.root / "outgoing"
    (outgoing / "U1234567.DailyActivity.20261120.20261120.xml.pgp").write_bytes(b"\x85\x01garbage" * 20)
    encrypt_bytes(pgp_key.public_file, XML, outgoing / "U7654321.DailyActivity.20260818.20260818.xml.pgp")
    (outgoing / "U7654321.DailyActivity.20260819.20260819.xml").write_bytes(XML)
    old = time.time() - 95 * DAY - 3600
    for name in ("U7654321.DailyActivity.20260818.20260818.xml.pgp", "U7654321.DailyActivity.20260819.20260819.xml"):
        os.utime(outgoing / name, (old, old))
    monkeypatch.setenv("TEST_SFTP_PASSPHRASE", sftp_client_key[2])
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_ALERT_URL", receiver.url)
    kh = server.write_known_hosts(tmp_path / "known_hosts")
    config_file = tmp_path / "ibreports.toml"
    config_file.write_text(f"""
[[sources]]
name = "ibkr-sftp"
kind = "sftp"
host = "127.0.0.1"
port = {server.port}
username = "{server.username}"
key_file = "{sftp_client_key[0]}"
key_passphrase = "env:TEST_SFTP_PASSPHRASE"
known_hosts = "{kh}"
remote_dir = "{outgoing}"
settle_seconds = 0

[pgp]
secret_key_file = "{pgp_key.secret_file}"
passphrase = "env:TEST_PGP_PASSPHRASE"
""" + alert_config(tmp_path, ["env:TEST_ALERT_URL"], "[retention]\nwarn_days = 20\n"))
    config = load_config(config_file)
    report = fetch(config)
    assert report.count("failed") == 1 and report.count("archived") == 2

    # The old files were archived by this run: only the failure is worth a message.
    assert send_alerts(config, report) == 1
    (failed,) = receiver.messages
    assert failed["type"] == "failure"
    assert "U1234567.DailyActivity.20261120.20261120.xml.pgp" in failed["message"]
    assert "OpenPGP" in failed["message"] or "decrypt" in failed["message"].lower()
    assert report.run_id in failed["title"]

    # status --alert: with the archive emptied the old files are at risk again.
    for path in sorted((tmp_path / "archive").rglob("*"), reverse=True):
        if "U7654321" in path.name and path.is_file():
            path.unlink()
    rc = main(["--config", str(config_file), "status", "--alert"])
    assert rc == 1
    risky = receiver.messages[-1]
    assert risky["type"] == "warning" and "2 file(s) at risk" in risky["title"]
    body = risky["message"]
    assert "close to the server's purge (within 20 days)" in body  # the config's warn_days
    assert "ibkr-sftp/U7654321.DailyActivity.20260818.20260818.xml.pgp: 5 day(s) left" in body
    assert "ibkr-sftp/U7654321.DailyActivity.20260819.20260819.xml: 5 day(s) left" in body
    assert "U1234567.DailyActivity.20261120" not in body  # fresh: not at risk

    everything = b"\n".join(receiver.raw).decode() + caplog.text
    for secret in (pgp_key.passphrase, sftp_client_key[2], TOKEN):
        assert secret not in everything
    assert receiver.paths == [f"/{TOKEN}"] * 2  # delivered to the configured target


def test_one_message_per_cause_and_nothing_sensitive(tmp_path, receiver, monkeypatch):
    monkeypatch.setenv("TEST_ALERT_URL", receiver.url)
    monkeypatch.setenv("TEST_PASSWORD", "hunter2-ftp-password")
    extra = """
[[sources]]
name = "ibkr-ftp"
kind = "ftp"
username = "acme"
password = "env:TEST_PASSWORD"
"""
    config = parse_config(alert_config(tmp_path, ["env:TEST_ALERT_URL"], extra), tmp_path / "ibreports.toml")
    report = RunReport(run_id="20261122T063000Z-abc123", started=datetime.now(timezone.utc).isoformat(),
                       sources=["ibkr-sftp", "ibkr-ftp"], warn_days=14)
    # A message that (wrongly) carries a secret is scrubbed before it leaves.
    report.files = [outcome("a.xml.pgp", "failed", "bad password hunter2-ftp-password"),
                    outcome("b.xml.pgp", "failed", "integrity check failed"),
                    outcome("c.xml.pgp", "waiting", days_left=3),
                    outcome("d.xml", "already-archived", days_left=1)]
    report.source_errors = {"ibkr-ftp": "Server refused our credentials for user acme. Check the password."}
    report.source_error_types = {"ibkr-ftp": "AuthenticationError"}
    assert send_alerts(config, report) == 2
    failed, risky = receiver.messages
    assert "3 problem(s)" in failed["title"]
    for text in ("a.xml.pgp", "b.xml.pgp: failed: integrity check failed", "source ibkr-ftp: Server refused"):
        assert text in failed["message"]
    assert "c.xml.pgp: 3 day(s) left" in risky["message"] and "d.xml" not in risky["message"]
    raw = b"\n".join(receiver.raw).decode()
    assert "hunter2" not in raw and TOKEN not in json.dumps(receiver.messages)


def run_record(archive, started: datetime, failing: bool, source: str = "ibkr-sftp") -> RunReport:
    report = RunReport(run_id=started.strftime("%Y%m%dT%H%M%SZ") + "-000000", started=started.isoformat(),
                       sources=[source])
    if failing:
        report.source_errors[source] = "Could not connect to xfer.interactivebrokers.com:32 (timed out)."
        report.source_error_types[source] = "ConnectionFailure"
    archive.put_bytes(f"runs/{started:%Y/%m}/{report.run_id}.json", report.to_record())
    return report


def test_unreachable_for_longer_than_the_limit(tmp_path, receiver, monkeypatch):
    monkeypatch.setenv("TEST_ALERT_URL", receiver.url)
    config = parse_config(alert_config(tmp_path, ["env:TEST_ALERT_URL"]), tmp_path / "ibreports.toml")
    archive = open_archive(config.archive)
    now = datetime.now(timezone.utc)
    run_record(archive, now - timedelta(days=4), failing=False)
    first_fail = run_record(archive, now - timedelta(days=3), failing=True)
    run_record(archive, now - timedelta(days=2), failing=True)
    run_record(archive, now - timedelta(days=1), failing=False, source="other")  # says nothing about ibkr-sftp
    current = run_record(archive, now, failing=True)
    assert down_since(archive, "ibkr-sftp", current) == pytest.approx(
        datetime.fromisoformat(first_fail.started).timestamp())
    assert send_alerts(config, current) == 1
    (msg,) = receiver.messages
    assert "1 source(s) unreachable" in msg["title"]
    assert "source ibkr-sftp: unreachable since" in msg["message"] and "(3 day(s))" in msg["message"]
    assert "timed out" in msg["message"]

    # A success yesterday: down for a day only, under the 2-day limit: no message.
    run_record(archive, now - timedelta(hours=20), failing=False)
    assert build_alerts(config, current, archive=archive) == []
    # A refused key is not "unreachable": it is a failure, reported at once.
    current.source_error_types["ibkr-sftp"] = "HostKeyError"
    (alert,) = build_alerts(config, current, archive=archive)
    assert alert.cause == "failed"


def test_delivery_problems_never_raise(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    broken = Receiver(status=500)
    try:
        monkeypatch.setenv("TEST_ALERT_URL", broken.url)
        config = parse_config(alert_config(tmp_path, ["env:TEST_ALERT_URL", "notascheme://x", "env:UNSET_VAR_X"]),
                              tmp_path / "ibreports.toml")
        report = RunReport(run_id="r1", started=datetime.now(timezone.utc).isoformat(), sources=["ibkr-sftp"])
        report.files = [outcome("a.xml.pgp", "failed", "truncated")]
        assert send_alerts(config, report) == 0
        assert len(broken.messages) == 1
    finally:
        broken.close()
    assert "alerts.urls[1]" in caplog.text and "alerts.urls[2]" in caplog.text
    assert "could not be delivered" in caplog.text
    assert TOKEN not in caplog.text and "notascheme" not in caplog.text
    empty = parse_config(alert_config(tmp_path, []), tmp_path / "ibreports.toml")
    assert send_alerts(empty, report) == 0


def test_an_unreadable_archive_costs_only_the_outage_timing(tmp_path, receiver, monkeypatch, caplog):
    monkeypatch.setenv("TEST_ALERT_URL", receiver.url)
    (tmp_path / "archive").write_text("a file where the archive folder should be")
    config = parse_config(alert_config(tmp_path, ["env:TEST_ALERT_URL"]), tmp_path / "ibreports.toml")
    report = RunReport(run_id="r2", started=datetime.now(timezone.utc).isoformat(), sources=["ibkr-sftp"])
    report.files = [outcome("a.xml.pgp", "failed", "truncated")]
    report.source_errors = {"ibkr-sftp": "Could not connect (timed out)."}
    report.source_error_types = {"ibkr-sftp": "ConnectionFailure"}
    assert send_alerts(config, report) == 1
    assert "a.xml.pgp" in receiver.messages[0]["message"]
    assert "could not read run records" in caplog.text
