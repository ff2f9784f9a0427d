"""Hostile names: nothing is written outside staging or the archive, every name is rejected or
archived under a safe key inside the archive, and every refusal is logged.

The sandbox lists names a real server cannot hold (``../x``, ``/etc/passwd``, ``a/b``, NUL, 4,000
characters); a real sshd serves the hostile names Linux does allow (backslash, CR/LF, DEL, bidi).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePosixPath

import paramiko
import pytest

from ibreports.cli import main
from ibreports.sandbox import SandboxServer, file_attr
from tests.reliability import local_archive_toml, local_objects, sftp_toml, snapshot, write_config

LISTED_ONLY = ["../x", "/etc/passwd", "a/b", "../../../../tmp/evil.xml", "..", ".", "", "a\x00b.xml",
               "x" * 4000, "..\\x", "a\r\nb.xml", "U1234567.Daily.20261101.20261101.xml/../../../evil"]
ON_DISK = ["..\\x.xml", "a\r\nb.xml", "tab\tname.csv", "del\x7fname.csv", "bidi\u202egpj.exe.csv",
           "line\u2028sep.csv", "esc\x1b[31mred.csv"]
ODD_BUT_SAFE = ["U1234567.Daily Activity.20261101.20261101.xml", "-rf.csv", "$(reboot).csv", "..hidden.csv",
                "name;rm -rf ~.csv", "ü-Übersicht.csv", "runs", "statements", ".tmp-evil.csv"]


def outside(tmp_path: Path, archive: Path) -> dict:
    """A snapshot of everything a hostile name could reach: the test folder (but the archive and
    staging), and the names at the top of /tmp and of the current folder."""
    return {"test folder": snapshot(tmp_path, skip=(archive, tmp_path / "staging")),
            "/tmp": set(os.listdir("/tmp")), "cwd": set(os.listdir("."))}


def escaped(before: dict, after: dict, names: list[str]) -> set[str]:
    """New names in /tmp or the current folder that a served name would produce (others' tests share /tmp)."""
    tails = {PurePosixPath(n.replace("\\", "/")).name for n in names} - {""}
    return {n for key in ("/tmp", "cwd") for n in after[key] - before[key] if n in tails or "evil" in n}


def outcomes(archive) -> dict[str, dict]:
    records = [json.loads(p.read_text()) for p in (archive / "runs").rglob("*.json")]
    return {f["name"]: f for r in records for f in r["files"]}


def check(tmp_path, archive, names, before, caplog) -> None:
    files = outcomes(archive)
    objects, temps = local_objects(archive)
    assert temps == []
    for name in names:
        if name not in files:  # never listed as a file (the SFTP client drops '', '.', '..' itself)
            assert name in ("", ".", ".."), name
            continue
        got = files[name]
        if got["outcome"] != "archived":
            assert got["outcome"] == "rejected", (name, got)  # refused at plan time, never downloaded
            assert got["reason"] and not any(k.rsplit("/", 1)[1] == name for k in objects)
            assert repr(name)[:40] in caplog.text or name[:40] in caplog.text  # logged, escaped
        else:
            assert all(k in objects for k in got["archive_keys"])
            assert any(k.rsplit("/", 1)[1] == name for k in got["archive_keys"])  # the name, unaltered
    after = outside(tmp_path, archive)
    assert after["test folder"] == before["test folder"]  # nothing written anywhere else under the test folder
    assert escaped(before, after, names) == set()  # nor in /tmp or the current folder
    assert list((tmp_path / "staging").iterdir()) == []


@pytest.fixture
def env(monkeypatch, pgp_key, sftp_client_key):
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_SSH_PASSPHRASE", sftp_client_key[2])


def test_sandbox_lists_impossible_names(tmp_path, sftp_client_key, pgp_key, env, caplog):
    caplog.set_level(logging.INFO)
    root = tmp_path / "served"
    (root / "outgoing").mkdir(parents=True)
    (root / "x").write_bytes(b"bait outside outgoing\n")  # what '../x' would reach on a naive server
    for name in ODD_BUT_SAFE:
        (root / "outgoing" / name).write_bytes(f"statement {name}\n".encode())
    key = paramiko.RSAKey.from_private_key_file(str(sftp_client_key[0]), password=sftp_client_key[2])
    with SandboxServer(root, authorized_key=key) as sandbox:
        real = {p.name: p.stat() for p in (root / "outgoing").iterdir()}
        sandbox.listing_override = lambda: (
            [file_attr(n, s.st_size, s.st_mtime) for n, s in real.items()] + [file_attr(n, 22) for n in LISTED_ONLY])
        source = sftp_toml("ibkr-sftp", sandbox.port, sandbox, sftp_client_key,
                           sandbox.write_known_hosts(tmp_path / "known_hosts"))
        source = source.replace(f'remote_dir = "{root / "outgoing"}"', 'remote_dir = "outgoing"')
        cfg = write_config(tmp_path, source, pgp_key, local_archive_toml(tmp_path / "archive"), tmp_path / "staging")
        (tmp_path / "staging").mkdir()
        before = outside(tmp_path, tmp_path / "archive")
        passwd = (open("/etc/passwd", "rb").read())
        assert main(["--config", str(cfg), "fetch"]) == 1
    check(tmp_path, tmp_path / "archive", LISTED_ONLY + ODD_BUT_SAFE, before, caplog)
    assert open("/etc/passwd", "rb").read() == passwd
    files = outcomes(tmp_path / "archive")
    assert all(files[n]["outcome"] == "archived" for n in ODD_BUT_SAFE), {n: files[n] for n in ODD_BUT_SAFE}
    # Reserved in the archive root only (temporary files): deeper, an ordinary name, archived unaltered.
    assert files[".tmp-evil.csv"]["archive_keys"][0].endswith("/.tmp-evil.csv")


def test_real_server_hostile_names_on_disk(tmp_path, sshd_factory, sftp_client_key, pgp_key, env, caplog):
    caplog.set_level(logging.INFO)
    server = sshd_factory([sftp_client_key[1]])
    for name in ON_DISK:
        (server.root / "outgoing" / name).write_bytes(b"hostile\n")
    good, longest = "U1234567.DailyActivity.20261101.20261101.csv", "y" * 251 + ".csv"  # 255 bytes: Linux's limit
    for name in (good, longest):
        (server.root / "outgoing" / name).write_bytes(b"Header,Value\n")
    source = sftp_toml("ibkr-sftp", server.port, server, sftp_client_key, server.write_known_hosts(tmp_path / "kh"))
    cfg = write_config(tmp_path, source, pgp_key, local_archive_toml(tmp_path / "archive"), tmp_path / "staging")
    (tmp_path / "staging").mkdir()
    before = outside(tmp_path, tmp_path / "archive")
    assert main(["--config", str(cfg), "fetch"]) == 1
    check(tmp_path, tmp_path / "archive", ON_DISK + [good, longest], before, caplog)
    files = outcomes(tmp_path / "archive")
    assert files[good]["outcome"] == "archived" and files[longest]["outcome"] == "archived"
    assert all(files[n]["outcome"] == "rejected" for n in ON_DISK), {n: files[n]["outcome"] for n in ON_DISK}
