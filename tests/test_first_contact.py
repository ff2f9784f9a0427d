"""First contact through the CLI: silent servers, legacy SSH servers, FTPS certificates, refused
logins. fetch and status must say what doctor says, fail only that source, and keep going."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from ibreports.cli import main
from tests import configs
from tests.fixtures.pgpkeys import encrypt_bytes
from tests.fixtures.sshd import Sha1OnlySshd

STATEMENT = b"<FlexQueryResponse queryName='DailyActivity'>one</FlexQueryResponse>\n"
ENCRYPTED = "U1234567.DailyActivity.20261101.20261101.xml.pgp"


@pytest.fixture
def silent_port():
    """A port that accepts TCP connections (the kernel completes them) and never says a word."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        yield silent.getsockname()[1]


@pytest.fixture
def env(monkeypatch, pgp_key, sftp_client_key):
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_SSH_PASSPHRASE", sftp_client_key[2])


@pytest.fixture
def healthy_ftp(ftp_factory, pgp_key, monkeypatch):
    server = ftp_factory()
    monkeypatch.setenv("TEST_FTP_PASSWORD", server.password)
    encrypt_bytes(pgp_key.public_file, STATEMENT, server.root / "outgoing" / ENCRYPTED)
    return server


def write_config(tmp_path: Path, sources: str, pgp_key) -> Path:
    cfg = tmp_path / "ibreports.toml"
    cfg.write_text(f"""{sources}
[pgp]
secret_key_file = "{pgp_key.secret_file}"
passphrase = "env:TEST_PGP_PASSPHRASE"

[archive]
url = "{tmp_path / 'archive'}"
""")
    return cfg


def silent_sftp(port: int, key, tmp_path: Path) -> str:
    return configs.source_toml({
        "name": "silent", "kind": "sftp", "host": "127.0.0.1", "port": port, "username": "nobody",
        "key_file": str(key[0]), "key_passphrase": "env:TEST_SSH_PASSPHRASE",
        "known_hosts": str(tmp_path / "known_hosts"), "timeout": 1,
    })


def silent_ftp(port: int) -> str:
    return configs.source_toml({
        "name": "silent", "kind": "ftp", "host": "127.0.0.1", "port": port, "username": "nobody",
        "password": "env:TEST_FTP_PASSWORD", "timeout": 1,
    })


def run(cfg: Path, capsys, *args: str) -> tuple[int, str]:
    code = main(["--config", str(cfg), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def run_records(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "archive" / "runs").rglob("*.json"))


@pytest.mark.parametrize("kind, said", [("sftp", "sent no SSH banner within 1 s"), ("ftp", "sent no FTP greeting within 1 s")])
def test_fetch_fails_a_silent_source_like_doctor_and_fetches_the_others(
        tmp_path, silent_port, healthy_ftp, sftp_client_key, pgp_key, env, capsys, kind, said):
    silent = silent_sftp(silent_port, sftp_client_key, tmp_path) if kind == "sftp" else silent_ftp(silent_port)
    cfg = write_config(tmp_path, silent + configs.ftp_toml(healthy_ftp), pgp_key)
    for attempt in range(1, 4):  # the same answer every time, not a race
        code, out = run(cfg, capsys, "fetch")
        assert code == 3, out
        assert f"127.0.0.1:{silent_port} accepted the TCP connection but {said}" in out
        assert "check host and port" in out and "firewall may block" not in out
        assert "unexpected" not in out.lower()
        assert len(run_records(tmp_path)) == attempt
    statements = list((tmp_path / "archive" / "statements").rglob("*.xml"))
    assert [p.read_bytes() for p in statements] == [STATEMENT]
    record = json.loads(run_records(tmp_path)[-1].read_text())
    assert said in record["source_errors"]["silent"]

    code, doctor_out = run(cfg, capsys, "doctor", "--source", "silent")
    assert code == 3 and said in doctor_out  # the very sentence doctor prints


def test_status_lists_the_healthy_source_beside_a_silent_one(
        tmp_path, silent_port, healthy_ftp, sftp_client_key, pgp_key, env, capsys):
    cfg = write_config(tmp_path, silent_sftp(silent_port, sftp_client_key, tmp_path) + configs.ftp_toml(healthy_ftp), pgp_key)
    code, out = run(cfg, capsys, "status", "--json")
    assert code == 3
    doc = json.loads(out)
    assert "accepted the TCP connection but sent no SSH banner within 1 s" in doc["errors"]["silent"]
    assert [(r["source"], r["name"]) for r in doc["files"]] == [("ibkr-ftp", ENCRYPTED)]


def test_fetch_names_the_disabled_algorithms_remedy_for_an_ssh_rsa_only_server(tmp_path, sftp_client_key, pgp_key, env, capsys):
    server = Sha1OnlySshd(tmp_path / "sshd", [sftp_client_key[1]])
    try:
        known = server.write_known_hosts(tmp_path / "known_hosts")
        cfg = write_config(tmp_path, configs.sftp_toml(server, sftp_client_key, known), pgp_key)
        code, out = run(cfg, capsys, "fetch")
    finally:
        server.stop()
    assert code == 3
    assert "accepted it with the old ssh-rsa (SHA-1) signature" in out
    assert 'disabled_algorithms = { pubkeys = ["rsa-sha2-256", "rsa-sha2-512"] }' in out
    assert "does not match the public key" not in out
    assert "1 source(s) login refused" in out


def ftps_toml(server, **extra) -> str:
    return configs.ftp_toml(server, **{"tls": True, **extra})


def test_self_signed_ftps_certificate_remedy_says_how_to_pin_it(tmp_path, ftp_factory, pgp_key, env, capsys, monkeypatch):
    server = ftp_factory(tls=True)
    monkeypatch.setenv("TEST_FTP_PASSWORD", server.password)
    cfg = write_config(tmp_path, ftps_toml(server), pgp_key)  # no ca_file
    code, out = run(cfg, capsys, "fetch")
    assert code == 3
    assert "could not be verified" in out
    assert f"openssl s_client -connect 127.0.0.1:{server.port} -starttls ftp -showcerts" in out
    assert "ca_file" in out and "can be pinned" in out
    assert "1 source(s) certificate refused" in out and "unreachable" not in out


def test_ftps_name_mismatch_with_ca_file_has_its_own_remedy(tmp_path, ftp_factory, pgp_key, env, capsys, monkeypatch):
    server = ftp_factory(tls=True, cert_names=("ftp.example.test",))
    monkeypatch.setenv("TEST_FTP_PASSWORD", server.password)
    cfg = write_config(tmp_path, ftps_toml(server, ca_file=str(server.ca_file)), pgp_key)
    code, out = run(cfg, capsys, "fetch")
    assert code == 3
    assert "issued for another name than host" in out and "ca_file cannot fix" in out
    assert "set ca_file to the certificate" not in out and "can be pinned" not in out
    code, doctor_out = run(cfg, capsys, "doctor", "--source", "ibkr-ftp")
    assert code == 3 and "issued for another name than host" in doctor_out


def test_wrong_ftp_password_is_summarised_as_login_refused(tmp_path, ftp_factory, pgp_key, env, capsys, monkeypatch):
    server = ftp_factory()
    monkeypatch.setenv("TEST_FTP_PASSWORD", "not-the-password")
    cfg = write_config(tmp_path, configs.ftp_toml(server), pgp_key)
    code, out = run(cfg, capsys, "fetch")
    assert code == 3 and "1 source(s) login refused" in out and "unreachable" not in out


def test_refused_auth_tls_explains_the_trade_off(tmp_path, ftp_factory, pgp_key, env, capsys, monkeypatch):
    server = ftp_factory(tls=False)  # plain FTP only: AUTH TLS is refused
    monkeypatch.setenv("TEST_FTP_PASSWORD", server.password)
    cfg = write_config(tmp_path, ftps_toml(server), pgp_key)
    code, out = run(cfg, capsys, "fetch")
    assert code == 3 and "refused AUTH TLS" in out
    assert "in clear" in out and "Set tls = false for this source" not in out
