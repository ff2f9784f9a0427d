"""Shared by the doctor tests: inline-secret source tables and `ibreports doctor --json` as a dict."""

from __future__ import annotations

import json
from pathlib import Path

from ibreports.cli import main
from tests import configs

ENCRYPTED = "U1234567.DailyActivity.20261101.20261101.xml.pgp"


def sftp_toml(server, key, known_hosts: Path, **extra) -> str:
    """Secrets inline: doctor reads them like any reference."""
    return configs.sftp_toml(server, key, known_hosts, **{"key_passphrase": key[2], "timeout": 5, **extra})


def ftp_toml(server, **extra) -> str:
    fields = {"password": server.password, "timeout": 5, "tls": server.tls}
    if server.ca_file:
        fields["ca_file"] = str(server.ca_file)
    return configs.ftp_toml(server, **{**fields, **extra})


def doctor(cfg: Path, capsys) -> tuple[int, dict[str, dict[str, dict]]]:
    """Run doctor --json; returns (exit code, {section name: {step name: step}})."""
    code = main(["--config", str(cfg), "doctor", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == code
    return code, {s["name"]: {step["name"]: step for step in s["steps"]} for s in data["sections"]}
