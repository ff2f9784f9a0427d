"""Hostile servers against the remotes: bad listing lines, endless listings, trickled downloads.

FTP: a hand-written FTP server (tests/fixtures/rawftp.py); sFTP: the sandbox's fault hooks.
"""

from __future__ import annotations

import base64
import itertools
import json
import socket
import threading
import time
from pathlib import Path

import paramiko
import pytest

from ibreports.config import Secret, SourceConfig
from ibreports.errors import ConnectionFailure, RemoteFileError, TooSlowError
from ibreports.remote import open_remote
from ibreports.remote.listing import MAX_ENTRIES
from ibreports.sandbox import SandboxServer, file_attr
from tests.fixtures.rawftp import RawFtpServer
from tests.helpers import source_config

GOOD = "U1234567.DailyActivity.20261101.20261101.xml.pgp"


@pytest.fixture
def raw_ftp():
    servers: list[RawFtpServer] = []

    def start(**options) -> RawFtpServer:
        server = RawFtpServer(**options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def raw_source(server: RawFtpServer, timeout: float = 5.0) -> SourceConfig:
    return source_config(
        "ftp", name="raw-ftp", host=server.host, port=server.port, username=server.username,
        password=Secret(server.password, "sources.raw-ftp.password", Path("/")), remote_dir="outgoing",
        timeout=timeout, settle_seconds=0,
    )


def test_bad_mlsd_lines_are_skipped_and_named_the_rest_is_listed(raw_ftp):
    lines = [
        b"type=file;size=abc;modify=20261101000000; U1234567.A.20261101.20261101.xml.pgp\r\n",
        b"type=file;size=10;modify=2026x101000000; U1234567.B.20261101.20261101.xml.pgp\r\n",
        b"type=file;size=10;modify=20261101000000.5e999; U1234567.C.20261101.20261101.xml.pgp\r\n",
        b"type=file;size=-5;modify=20261101000000; U1234567.D.20261101.20261101.xml.pgp\r\n",
        b"type=file;size=10;modify=20261101000000; \xff\xfe.xml.pgp\r\n",
        b"type=file;size=7;modify=" + b"9" * 9000 + b"; U1234567.E.20261101.20261101.xml.pgp\r\n",
        f"type=file;size=12;modify=20261101000000; {GOOD}\r\n".encode(),
        b"type=dir;modify=20261101000000; archive\r\n",
    ]
    server = raw_ftp(mlsd=lambda: iter(lines))
    with open_remote(raw_source(server)) as remote:
        listing = remote.list()
    assert [(f.name, f.size) for f in listing] == [(GOOD, 12)]
    reasons = dict(listing.skipped)
    assert "abc" in reasons["U1234567.A.20261101.20261101.xml.pgp"]
    assert "2026x101000000" in reasons["U1234567.B.20261101.20261101.xml.pgp"]
    assert "5e999" in reasons["U1234567.C.20261101.20261101.xml.pgp"]
    assert "-5" in reasons["U1234567.D.20261101.20261101.xml.pgp"]
    assert any("not valid UTF-8" in r for r in reasons.values())
    assert any("longer than 8192 bytes" in r for r in reasons.values())
    assert len(listing.skipped) == 6


def test_endless_mlsd_stops_with_a_clear_error(raw_ftp):
    endless = (f"type=file;size=1;modify=20261101000000; U1234567.X.{n:09d}.xml.pgp\r\n".encode()
               for n in itertools.count())
    server = raw_ftp(mlsd=lambda: endless)
    with open_remote(raw_source(server)) as remote:
        with pytest.raises(RemoteFileError, match=f"exceeded {MAX_ENTRIES} entries") as err:
            remote.list()
    assert "without end" in err.value.remedy


def test_trickled_mlsd_listing_is_dropped_below_the_minimum_rate(raw_ftp):
    def slow():
        for n in itertools.count():
            time.sleep(0.2)  # ~300 bytes/s, never idle for 1 s
            yield f"type=file;size=1;modify=20261101000000; U1234567.X.{n:09d}.xml.pgp\r\n".encode()

    server = raw_ftp(mlsd=slow)
    with open_remote(raw_source(server, timeout=1)) as remote:
        with pytest.raises(TooSlowError, match="during the listing, below the minimum of 1024 bytes/s"):
            remote.list()


def test_trickled_ftp_download_is_dropped_below_the_minimum_rate(raw_ftp, tmp_path):
    server = raw_ftp(files={GOOD: b"x" * 4096}, trickle=0.05)  # ~20 bytes/s, never idle for 1 s
    with open_remote(raw_source(server, timeout=1)) as remote:
        with pytest.raises(TooSlowError, match="below the minimum of 1024 bytes/s"):
            remote.download(GOOD, tmp_path / "dest", 4096)
    assert not (tmp_path / "dest").exists()


@pytest.fixture
def sandbox(tmp_path, sftp_client_key):
    kind, b64 = sftp_client_key[1].split()[:2]
    server = SandboxServer(tmp_path / "root", authorized_key=paramiko.PKey.from_type_string(kind, base64.b64decode(b64)))
    (tmp_path / "root" / "outgoing").mkdir(parents=True)
    server.start()
    yield server
    server.stop()


def sandbox_source(server: SandboxServer, key, tmp_path, timeout: float = 5.0) -> SourceConfig:
    return source_config(
        "sftp", name="sandbox", host=server.host, port=server.port, username=server.username,
        key_file=key[0], key_passphrase=Secret(key[2], "sources.sandbox.key_passphrase", tmp_path) if key[2] else None,
        known_hosts=server.write_known_hosts(tmp_path / "known_hosts"), remote_dir="/outgoing", timeout=timeout,
        settle_seconds=0,
    )


def test_sftp_entries_without_size_or_with_a_bad_name_are_skipped(sandbox, sftp_client_key, tmp_path):
    no_size = file_attr("U1234567.NoSize.20261101.20261101.xml.pgp", 5)
    no_size.st_size = None  # the SIZE flag is not sent
    bad_name = file_attr("placeholder", 5)
    bad_name.filename = b"\xff\xfe.xml.pgp"
    sandbox.listing_override = lambda: [no_size, bad_name, file_attr(GOOD, 12)]
    with open_remote(sandbox_source(sandbox, sftp_client_key, tmp_path)) as remote:
        listing = remote.list()
    assert [(f.name, f.size) for f in listing] == [(GOOD, 12)]
    reasons = dict(listing.skipped)
    assert reasons["U1234567.NoSize.20261101.20261101.xml.pgp"] == "the server gave no size"
    assert any("not valid UTF-8" in r for r in reasons.values())


def test_endless_sftp_listing_stops_with_a_clear_error(sandbox, sftp_client_key, tmp_path):
    sandbox.endless_listing = True
    with open_remote(sandbox_source(sandbox, sftp_client_key, tmp_path)) as remote:
        with pytest.raises(RemoteFileError, match=f"exceeded {MAX_ENTRIES} entries"):
            remote.list()


def test_trickled_sftp_download_is_dropped_below_the_minimum_rate(sandbox, sftp_client_key, tmp_path):
    (sandbox.root / "outgoing" / GOOD).write_bytes(b"x" * 4096)
    sandbox.max_read, sandbox.read_delay = 1, 0.05  # ~20 bytes/s, never idle for 1 s
    with open_remote(sandbox_source(sandbox, sftp_client_key, tmp_path, timeout=1)) as remote:
        with pytest.raises(TooSlowError, match="below the minimum of 1024 bytes/s"):
            remote.download(GOOD, tmp_path / "dest", 4096)
    assert not (tmp_path / "dest").exists()


def test_ssh_server_that_stalls_after_its_banner_is_a_handshake_time_out(sftp_client_key, tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        held: list[socket.socket] = []

        def greet_then_stall() -> None:
            conn, _ = listener.accept()
            conn.sendall(b"SSH-2.0-Stalled\r\n")
            held.append(conn)

        thread = threading.Thread(target=greet_then_stall, daemon=True)
        thread.start()
        source = source_config(
            "sftp", name="stalled", host="127.0.0.1", port=port, username="u", key_file=sftp_client_key[0],
            key_passphrase=Secret(sftp_client_key[2], "sources.stalled.key_passphrase", tmp_path),
            known_hosts=tmp_path / "known_hosts", timeout=1,
        )
        try:
            with pytest.raises(ConnectionFailure, match="did not complete the SSH handshake within 1 s"):
                open_remote(source)
        finally:
            thread.join(5)
            for conn in held:
                conn.close()


def test_fetch_skips_a_bad_listing_line_names_it_and_archives_the_rest(raw_ftp, tmp_path, pgp_key, monkeypatch, caplog):
    from ibreports.cli import main
    from tests.fixtures.pgpkeys import encrypt_bytes

    statement = b"<FlexQueryResponse queryName='DailyActivity'>one</FlexQueryResponse>\n"
    encrypt_bytes(pgp_key.public_file, statement, tmp_path / "good.pgp")
    payload = (tmp_path / "good.pgp").read_bytes()
    lines = [
        b"type=file;size=abc;modify=20261101000000; U1234567.Bad.20261101.20261101.xml.pgp\r\n",
        f"type=file;size={len(payload)};modify=20261101000000; {GOOD}\r\n".encode(),
    ]
    server = raw_ftp(mlsd=lambda: iter(lines), files={GOOD: payload})
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    cfg = tmp_path / "ibreports.toml"
    cfg.write_text(f"""[[sources]]
name = "raw-ftp"
kind = "ftp"
host = "{server.host}"
port = {server.port}
username = "{server.username}"
password = "{server.password}"
settle_seconds = 0
timeout = 5

[pgp]
secret_key_file = "{pgp_key.secret_file}"
passphrase = "env:TEST_PGP_PASSPHRASE"

[archive]
url = "{tmp_path / 'archive'}"
""")
    code = main(["--config", str(cfg), "fetch"])
    assert "raw-ftp: skipped listing entry 'U1234567.Bad.20261101.20261101.xml.pgp': size 'abc' is not a number" \
        in caplog.text
    assert [p.read_bytes() for p in (tmp_path / "archive" / "statements").rglob("*.xml")] == [statement]
    assert code == 1  # the good file is archived; the unreadable line is named as a rejected file
    record = json.loads(next((tmp_path / "archive" / "runs").rglob("*.json")).read_text())
    rejected = [f for f in record["files"] if f["outcome"] == "rejected"]
    assert [(f["name"], f["code"]) for f in rejected] == [("U1234567.Bad.20261101.20261101.xml.pgp", "bad-entry")]
    assert "size 'abc' is not a number" in rejected[0]["reason"]
