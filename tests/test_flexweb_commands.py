"""A flexweb source through the commands: status and doctor treat it like any source."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ibreports.cli import main
from tests.flexsource import flex_toml


def write_config(tmp_path: Path, source: str, pgp_key) -> Path:
    cfg = tmp_path / "ibreports.toml"
    cfg.write_text(source + f'\n[pgp]\nsecret_key_file = "{pgp_key.secret_file}"\n'
                   f'passphrase = {json.dumps(pgp_key.passphrase)}\n[archive]\nurl = "{tmp_path / "archive"}"\n')
    return cfg


def test_status_names_the_on_demand_source_and_finds_nothing_at_risk(flexweb, tmp_path, pgp_key, monkeypatch, capsys):
    token = flexweb.add_token().value
    monkeypatch.setenv("IBREPORTS_FLEX_TOKEN", token)
    cfg = write_config(tmp_path, flex_toml(flexweb, [flexweb.add_query("DailyActivity", ["U1234567"])]), pgp_key)
    assert main(["--config", str(cfg), "status"]) == 0
    out = capsys.readouterr().out
    assert "source ibkr-flex: on demand" in out
    assert main(["--config", str(cfg), "status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["files"] == [] and doc["errors"] == {}
    assert flexweb.hits == []  # status asks IBKR for nothing: no statement is made for it


def test_doctor_checks_token_ip_and_queries(flexweb, tmp_path, pgp_key, monkeypatch, capsys):
    token = flexweb.add_token()
    monkeypatch.setenv("IBREPORTS_FLEX_TOKEN", token.value)
    queries = [flexweb.add_query("DailyActivity", ["U1234567"]), flexweb.add_query("Monthly", ["U1234567"])]
    cfg = write_config(tmp_path, flex_toml(flexweb, queries), pgp_key)
    assert main(["--config", str(cfg), "doctor", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [section] = [s for s in doc["sections"] if s["name"] == "ibkr-flex"]
    assert [(s["name"], s["status"]) for s in section["steps"]] == [
        ("https", "ok"), ("token", "ok"), ("ip", "ok"), ("query DailyActivity", "ok"), ("query Monthly", "ok")]
    assert "flexweb" in section["title"] and "127.0.0.1" in section["title"]

    token.expires = time.time() - 1
    assert main(["--config", str(cfg), "doctor"]) == 3
    out = capsys.readouterr().out
    assert "error 1012" in out and "Flex Web Service Configuration" in out and token.value not in out
