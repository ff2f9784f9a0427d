"""`ibreports trust-host` against a real sshd: record, refuse changes and mismatches, replace on request."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ibreports.cli import main
from ibreports.config import load_config
from ibreports.trust import record

PLAIN_FILE = ("DU1234567.Activity.20261104.20261104.csv", b"Header,Value\nCash,100\n")


def other_host_key_line() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def ssh_keygen_fingerprint(key_line: str) -> str:
    """The fingerprint as OpenSSH's own ssh-keygen -l prints it."""
    out = subprocess.run(["ssh-keygen", "-lf", "-"], input=key_line + "\n", capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


@pytest.fixture
def server(sshd_factory, sftp_client_key):
    return sshd_factory([sftp_client_key[1]])


def write_config(tmp_path: Path, server, key, known_hosts: Path, kind: str = "sftp") -> Path:
    key_path, _public, passphrase = key
    keys = (f'key_file = "{key_path}"\nkey_passphrase = "{passphrase}"\nknown_hosts = "{known_hosts}"' if kind == "sftp"
            else 'password = "unused"')
    cfg = tmp_path / "ibreports.toml"
    cfg.write_text(f"""[[sources]]
name = "ibkr-sftp"
kind = "{kind}"
host = "{server.host}"
port = {server.port}
username = "{server.username}"
{keys}
remote_dir = "{server.root / 'outgoing'}"
settle_seconds = 0
timeout = 10

[archive]
url = "{tmp_path / 'archive'}"
""")
    return cfg


def trust(cfg: Path, *extra: str) -> int:
    return main(["--config", str(cfg), "trust-host", "--source", "ibkr-sftp", *extra])


def test_records_the_key_then_fetch_connects(tmp_path, server, sftp_client_key, capsys):
    known_hosts = tmp_path / "keys" / "known_hosts"  # its folder does not exist yet
    cfg = write_config(tmp_path, server, sftp_client_key, known_hosts)
    assert main(["--config", str(cfg), "fetch"]) == 3  # not trusted yet: refused
    assert "trust-host --source ibkr-sftp" in capsys.readouterr().out

    assert trust(cfg, "--yes") == 0
    out = capsys.readouterr().out
    fp = ssh_keygen_fingerprint(server.host_key_line())
    assert f"[127.0.0.1]:{server.port} shows host key ssh-ed25519 {fp}" in out
    assert known_hosts.read_text() == f"[127.0.0.1]:{server.port} {server.host_key_line()}\n"
    assert known_hosts.stat().st_mode & 0o777 == 0o644

    (server.root / "outgoing" / PLAIN_FILE[0]).write_bytes(PLAIN_FILE[1])
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert (tmp_path / "archive" / "statements" / "DU1234567" / "2026" / "11" / PLAIN_FILE[0]).read_bytes() == PLAIN_FILE[1]


def test_same_key_again_is_a_no_op(tmp_path, server, sftp_client_key, capsys):
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    before = known_hosts.read_bytes()
    cfg = write_config(tmp_path, server, sftp_client_key, known_hosts)
    assert trust(cfg) == 0  # no --yes needed: nothing to confirm
    assert "Already recorded" in capsys.readouterr().out
    assert known_hosts.read_bytes() == before


def test_refuses_a_changed_key_without_replace(tmp_path, server, sftp_client_key, capsys):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{server.port} {other_host_key_line()}\n")
    before = known_hosts.read_bytes()
    cfg = write_config(tmp_path, server, sftp_client_key, known_hosts)
    assert trust(cfg, "--yes") == 3
    err = capsys.readouterr().err
    assert "CHANGED" in err and "intercepting" in err and "--replace" in err
    assert known_hosts.read_bytes() == before


def test_replace_swaps_only_this_hosts_key(tmp_path, server, sftp_client_key, capsys):
    known_hosts = tmp_path / "known_hosts"
    unrelated = f"example.org {other_host_key_line()}"
    old = f"[127.0.0.1]:{server.port} {other_host_key_line()}"
    known_hosts.write_text(f"# pinned by hand\n{unrelated}\n{old}\n")
    cfg = write_config(tmp_path, server, sftp_client_key, known_hosts)
    fp = ssh_keygen_fingerprint(server.host_key_line())
    assert trust(cfg, "--replace", "--fingerprint", fp) == 0
    captured = capsys.readouterr()
    assert "interception" in captured.err.replace("intercepting", "interception")
    assert known_hosts.read_text() == (
        f"# pinned by hand\n{unrelated}\n[127.0.0.1]:{server.port} {server.host_key_line()}\n"
    )


def test_matching_fingerprint_records_without_prompt(tmp_path, server, sftp_client_key, capsys):
    known_hosts = tmp_path / "known_hosts"
    cfg = write_config(tmp_path, server, sftp_client_key, known_hosts)
    fp = ssh_keygen_fingerprint(server.host_key_line())
    assert trust(cfg, "--fingerprint", fp.removeprefix("SHA256:")) == 0  # the prefix is optional
    assert "matches --fingerprint" in capsys.readouterr().out
    assert server.host_key_line() in known_hosts.read_text()


def test_mismatching_fingerprint_is_refused(tmp_path, server, sftp_client_key, capsys):
    known_hosts = tmp_path / "known_hosts"
    cfg = write_config(tmp_path, server, sftp_client_key, known_hosts)
    wrong = ssh_keygen_fingerprint(other_host_key_line())
    assert trust(cfg, "--fingerprint", wrong, "--yes") == 3
    err = capsys.readouterr().err
    assert f"not the expected {wrong}" in err and "intercepting" in err
    assert not known_hosts.exists()


def test_non_interactive_without_confirmation_is_refused(tmp_path, server, sftp_client_key, capsys):
    known_hosts = tmp_path / "known_hosts"
    cfg = write_config(tmp_path, server, sftp_client_key, known_hosts)
    assert trust(cfg) == 2
    captured = capsys.readouterr()
    assert ssh_keygen_fingerprint(server.host_key_line()) in captured.out  # shown, so it can be checked
    assert "--fingerprint" in captured.err
    assert not known_hosts.exists()


class _Tty:
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answer", "code"), [("y", 0), ("", 3), ("N", 3)])
def test_prompt_on_a_terminal(tmp_path, server, sftp_client_key, monkeypatch, capsys, answer, code):
    known_hosts = tmp_path / "known_hosts"
    cfg = write_config(tmp_path, server, sftp_client_key, known_hosts)
    asked = []
    monkeypatch.setattr(sys, "stdin", _Tty())
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or answer)
    assert trust(cfg) == code  # declining is a host-key failure (3), not "files at risk" (1)
    assert asked and "[y/N]" in asked[0]
    assert known_hosts.exists() == (code == 0)
    if code == 3:
        err = capsys.readouterr().err
        assert "nothing was recorded" in err and "--fingerprint SHA256:" in err and "IBKR" in err


def test_no_terminal_does_not_hang(tmp_path, server, sftp_client_key):
    """A real process with stdin from /dev/null (cron, CI) gets a clear refusal, never a blocked prompt."""
    cfg = write_config(tmp_path, server, sftp_client_key, tmp_path / "known_hosts")
    done = subprocess.run(
        [sys.executable, "-c", "from ibreports.cli import run; run()", "--config", str(cfg), "trust-host", "--source", "ibkr-sftp"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "No terminal" in done.stderr and "--fingerprint" in done.stderr
    assert not (tmp_path / "known_hosts").exists()


def test_ftp_source_is_refused(tmp_path, server, sftp_client_key, capsys):
    cfg = write_config(tmp_path, server, sftp_client_key, tmp_path / "known_hosts", kind="ftp")
    assert trust(cfg, "--yes") == 2
    assert "certificates" in capsys.readouterr().err


def test_replace_drops_hashed_entries_too(tmp_path, server, sftp_client_key):
    known_hosts = tmp_path / "known_hosts"
    hashed = paramiko.HostKeys.hash_host(f"[127.0.0.1]:{server.port}")
    other = paramiko.HostKeys.hash_host("[127.0.0.1]:1")
    known_hosts.write_text(f"{hashed} {other_host_key_line()}\n{other} {other_host_key_line()}\n")
    source = load_config(write_config(tmp_path, server, sftp_client_key, known_hosts)).source("ibkr-sftp")
    kind, blob = server.host_key_line().split()[:2]
    key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
    record(source, key, replace=True)
    lines = known_hosts.read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith(other) and lines[1].endswith(server.host_key_line())


def test_a_silent_server_gets_the_sentence_fetch_and_doctor_give(tmp_path, server, sftp_client_key, capsys):
    import socket

    with socket.socket() as silent:  # accepts TCP (the kernel does), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        cfg = write_config(tmp_path, server, sftp_client_key, tmp_path / "known_hosts")
        cfg.write_text(cfg.read_text().replace(f"port = {server.port}", f"port = {silent.getsockname()[1]}")
                       .replace("timeout = 10", "timeout = 1"))
        assert trust(cfg, "--yes") == 3
    out = capsys.readouterr()
    assert "accepted the TCP connection but sent no SSH banner within 1 s" in out.out + out.err
    assert not (tmp_path / "known_hosts").exists()
