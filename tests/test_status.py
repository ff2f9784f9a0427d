"""`ibreports status` against a real sshd (and the sandbox for hostile names), a real archive."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import paramiko
import pytest

from ibreports.cli import main
from ibreports.config import load_config
from ibreports.pipeline import fetch
from ibreports.sandbox import SandboxServer, file_attr
from ibreports.status import collect_status
from tests.fixtures.pgpkeys import encrypt_bytes
from tests.fixtures.sshd import free_port

DAY = 86400
ROW_KEYS = {"source", "name", "account", "statement_date", "age_days", "days_left", "archived", "at_risk",
            "last_outcome", "last_reason"}
TOP_KEYS = {"generated", "purge_days", "warn_days", "files", "errors", "conflicts"}
XML = b'<FlexQueryResponse queryName="DailyActivity" type="AF"><FlexStatements count="0"/></FlexQueryResponse>\n'


def source_toml(name: str, host: str, port: int, username: str, key: tuple, known_hosts: Path, remote_dir: str) -> str:
    return f"""
[[sources]]
name = "{name}"
kind = "sftp"
host = "{host}"
port = {port}
username = "{username}"
key_file = "{key[0]}"
key_passphrase = "env:TEST_SFTP_PASSPHRASE"
known_hosts = "{known_hosts}"
remote_dir = "{remote_dir}"
settle_seconds = 0
timeout = 5
"""


def write_config(tmp_path: Path, sources: str, pgp_key) -> Path:
    path = tmp_path / "ibreports.toml"
    path.write_text(sources + f"""
[pgp]
secret_key_file = "{pgp_key.secret_file}"
passphrase = "env:TEST_PGP_PASSPHRASE"

[archive]
url = "{tmp_path / 'archive'}"

[retention]
purge_days = 100
warn_days = 14
""")
    return path


@pytest.fixture
def env(monkeypatch, sftp_client_key, pgp_key):
    monkeypatch.setenv("TEST_SFTP_PASSPHRASE", sftp_client_key[2])
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)


@pytest.fixture
def server(sshd_factory, sftp_client_key):
    return sshd_factory([sftp_client_key[1]])


@pytest.fixture
def config_path(tmp_path, server, sftp_client_key, pgp_key, env):
    kh = server.write_known_hosts(tmp_path / "known_hosts")
    src = source_toml("ibkr-sftp", server.host, server.port, server.username, sftp_client_key, kh,
                      str(server.root / "outgoing"))
    return write_config(tmp_path, src, pgp_key)


def put(folder: Path, name: str, days: float, data: bytes = XML) -> Path:
    path = folder / name
    path.write_bytes(data)
    when = time.time() - days * DAY
    os.utime(path, (when, when))
    return path


def run_status(capsys, config: Path, *extra: str) -> tuple[int, str]:
    rc = main(["--config", str(config), "status", *extra])
    return rc, capsys.readouterr().out


def test_days_left_archived_and_exit_codes(capsys, tmp_path, server, config_path, pgp_key):
    outgoing = server.root / "outgoing"
    # Ages are whole days plus an hour, so the floor of the age holds while the test runs.
    # c95 is archived by a real run first (encrypted: archived means statement AND original).
    encrypt_bytes(pgp_key.public_file, XML, tmp_path / "enc")
    c95 = put(outgoing, "U1234567.DailyActivity.20260818.20260818.xml.pgp", 95 + 1 / 24,
              (tmp_path / "enc").read_bytes())
    report = fetch(load_config(config_path))
    assert report.count("archived") == 1, report.files
    names = {
        "a0": put(outgoing, "U1234567.DailyActivity.20261121.20261121.xml", 0).name,
        "b85": put(outgoing, "U7654321.DailyActivity.20260828.20260828.xml", 85 + 1 / 24).name,
        "b86": put(outgoing, "U7654321.DailyActivity.20260827.20260827.xml", 86 + 1 / 24).name,
        "c95": c95.name,
        "d95": put(outgoing, "DU1234567.DailyActivity.20260818.20260818.xml", 95 + 1 / 24).name,
        "e99": put(outgoing, "F1234567.MonthlyActivity.20260801.20260814.xml", 99 + 1 / 24).name,
    }
    rc, out = run_status(capsys, config_path, "--json")
    assert rc == 1
    doc = json.loads(out)
    assert set(doc) == TOP_KEYS
    assert (doc["purge_days"], doc["warn_days"], doc["errors"]) == (100, 14, {})
    rows = {r["name"]: r for r in doc["files"]}
    assert set(rows) == set(names.values())
    assert all(set(r) == ROW_KEYS for r in doc["files"])
    expect = {  # tag: (age, days left, archived, at risk)
        "a0": (0, 100, False, False), "b85": (85, 15, False, False), "b86": (86, 14, False, True),
        "c95": (95, 5, True, False), "d95": (95, 5, False, True), "e99": (99, 1, False, True),
    }
    for tag, (age, left, archived, risky) in expect.items():
        row = rows[names[tag]]
        assert (row["age_days"], row["days_left"], row["archived"], row["at_risk"]) == (age, left, archived, risky), tag
        assert row["source"] == "ibkr-sftp"
    assert rows[names["d95"]]["account"] == "DU1234567"
    assert rows[names["d95"]]["statement_date"] == "2026-08-18"
    assert [r["days_left"] for r in doc["files"]] == sorted(r["days_left"] for r in doc["files"])

    rc, out = run_status(capsys, config_path)
    assert rc == 1
    lines = [line for line in out.splitlines() if "ibkr-sftp/" in line]
    assert lines[0].startswith("!") and names["e99"] in lines[0]
    marked = {n for n in names.values() for line in lines if n in line and line.startswith("!")}
    assert marked == {names["b86"], names["d95"], names["e99"]}
    assert "3 at risk" in out

    # Same rule as the pipeline: with keep_encrypted, a missing original means not archived.
    original = next((tmp_path / "archive" / "encrypted").rglob(c95.name))
    original.unlink()
    row = {r.name: r for r in collect_status(load_config(config_path)).files}[c95.name]
    assert (row.archived, row.at_risk) == (False, True)

    for tag in ("b86", "c95", "d95", "e99"):
        (outgoing / names[tag]).unlink()
    rc, out = run_status(capsys, config_path)
    assert rc == 0
    assert "0 at risk" in out and not any(line.startswith("!") for line in out.splitlines())


def test_a_file_that_failed_in_the_last_run_shows_why(capsys, tmp_path, server, config_path, pgp_key):
    outgoing = server.root / "outgoing"
    good = put(outgoing, "U1234567.DailyActivity.20261120.20261120.xml", 2)
    bad = put(outgoing, "U7654321.DailyActivity.20261120.20261120.xml.pgp", 90 + 1 / 24, b"not a PGP message")
    report = fetch(load_config(config_path))
    assert report.count("failed") == 1 and report.count("archived") == 1
    fetch(load_config(config_path), dry_run=True)  # a dry run records nothing about the files' fate
    rc, out = run_status(capsys, config_path)
    assert rc == 1
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if bad.name in line)
    assert " NO " in lines[row]
    assert lines[row + 1].strip().startswith("last run: failed: Named as encrypted but the content is not an "
                                             "OpenPGP message")
    assert not any("last run:" in line for i, line in enumerate(lines) if i != row + 1)
    rc, out = run_status(capsys, config_path, "--json")
    rows = {r["name"]: r for r in json.loads(out)["files"]}
    assert rows[bad.name]["last_outcome"] == "failed" and "not an OpenPGP message" in rows[bad.name]["last_reason"]
    assert rows[good.name]["archived"] and rows[good.name]["last_outcome"] is None
    # A later run that archives it clears the reason.
    bad.write_bytes(XML)
    bad.rename(outgoing / "U7654321.DailyActivity.20261120.20261120.xml")
    fetch(load_config(config_path))
    rc, out = run_status(capsys, config_path)
    assert rc == 0 and "last run:" not in out


def test_unreachable_source_exits_3_and_still_lists_the_others(capsys, tmp_path, server, sftp_client_key, pgp_key, env):
    put(server.root / "outgoing", "U1234567.DailyActivity.20261120.20261120.xml", 1)
    kh = server.write_known_hosts(tmp_path / "known_hosts")
    good = source_toml("good", server.host, server.port, server.username, sftp_client_key, kh, str(server.root / "outgoing"))
    bad = source_toml("down", "127.0.0.1", free_port(), server.username, sftp_client_key, kh, "outgoing")
    config = write_config(tmp_path, good + bad, pgp_key)
    rc, out = run_status(capsys, config, "--json")
    assert rc == 3
    doc = json.loads(out)
    assert list(doc["errors"]) == ["down"]
    assert [r["source"] for r in doc["files"]] == ["good"]
    assert sftp_client_key[2] not in out and pgp_key.passphrase not in out
    rc, out = run_status(capsys, config, "--source", "good")
    assert rc == 0


def test_hostile_names_are_listed_never_archived(capsys, tmp_path, sftp_client_key, pgp_key, env):
    kind, b64 = sftp_client_key[1].split()[:2]
    client_key = paramiko.PKey.from_type_string(kind, base64.b64decode(b64))
    (tmp_path / "root" / "outgoing").mkdir(parents=True)
    old = time.time() - (97 * DAY + 3600)
    hostile = ["../x.xml", "/etc/passwd", "a/b.xml", "..\\x.xml", "a\x00b.xml", "a\r\nb.xml", "x" * 4000]
    with SandboxServer(tmp_path / "root", authorized_key=client_key) as sandbox:
        sandbox.listing_override = lambda: [file_attr(n, 10, old) for n in hostile] + [
            file_attr("U1234567.DailyActivity.20261120.20261120.xml", 10)]
        kh = tmp_path / "known_hosts"
        sandbox.write_known_hosts(kh)
        src = source_toml("sandbox", "127.0.0.1", sandbox.port, "demo", sftp_client_key, kh, "outgoing")
        rc, out = run_status(capsys, write_config(tmp_path, src, pgp_key), "--json")
        human_rc, human = run_status(capsys, tmp_path / "ibreports.toml")
    assert rc == human_rc == 1
    rows = {r["name"]: r for r in json.loads(out)["files"]}
    assert set(rows) == set(hostile) | {"U1234567.DailyActivity.20261120.20261120.xml"}
    for name in hostile:
        assert (rows[name]["archived"], rows[name]["at_risk"], rows[name]["days_left"]) == (False, True, 3)
    assert "'a\\x00b.xml'" in human  # shown escaped, never raw control characters
    assert "\r" not in human and "\x00" not in human
