"""sFTP specifics against real OpenSSH: host key pinning before login, key problems, reconnects."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ibreports.errors import AuthenticationError, ConfigError, ConnectionFailure, HostKeyError, is_transient
from ibreports.remote import open_remote
from ibreports.remote.hostkeys import fingerprint
from ibreports.trust import record, scan
from tests.fixtures.sshd import free_port, make_client_key, sftp_source
from tests.waiting import eventually

OTHER_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBcJ7p0p4sGq7k0kZ0n2d8vC2x5b0n0dWmQbqC1QfN6X"


@pytest.fixture
def server(sshd_factory, sftp_client_key):
    return sshd_factory([sftp_client_key[1]])


@pytest.fixture(scope="module")
def stranger_key(tmp_path_factory):
    """A valid key that no server authorizes."""
    path, public = make_client_key(tmp_path_factory.mktemp("stranger"), None)
    return path, public, None


def closed_log(server, since: int) -> str:
    """sshd's log from ``since`` on, once the refused connection has been logged as closed."""
    closed = ("Connection closed", "Connection reset", "Disconnected")
    eventually(lambda: any(word in server.log_text()[since:] for word in closed))
    return server.log_text()[since:]


@pytest.mark.parametrize("key", ["authorized", "stranger"])
def test_unknown_host_key_is_refused_before_authentication(server, sftp_client_key, stranger_key, tmp_path, key):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    mark = len(server.log_text())
    chosen = sftp_client_key if key == "authorized" else stranger_key
    with pytest.raises(HostKeyError) as err:
        open_remote(sftp_source(server, chosen, known_hosts=empty))
    assert f"[127.0.0.1]:{server.port} is not in {empty}" in err.value.message
    assert "ibreports trust-host --source test-sftp" in err.value.remedy
    assert not is_transient(err.value)
    log = closed_log(server, mark)
    assert "Connection from 127.0.0.1" in log  # the log did record this connection...
    assert "publickey" not in log  # ...but no key was ever offered
    assert empty.read_text() == ""  # and nothing was trusted implicitly


def test_missing_known_hosts_file_is_an_unknown_host(server, sftp_client_key, tmp_path):
    with pytest.raises(HostKeyError, match="is not in"):
        open_remote(sftp_source(server, sftp_client_key, known_hosts=tmp_path / "nope"))


def test_changed_host_key_is_refused(server, sftp_client_key, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {OTHER_HOST_KEY}\n")
    mark = len(server.log_text())
    with pytest.raises(HostKeyError) as err:
        open_remote(sftp_source(server, sftp_client_key, known_hosts=known))
    assert "CHANGED" in err.value.message and "intercept" in err.value.message
    assert "publickey" not in closed_log(server, mark)


def test_recorded_key_of_another_type_counts_as_changed(server, sftp_client_key, stranger_key, tmp_path):
    rsa_line = " ".join(stranger_key[1].split()[:2])  # an RSA key where the server only has ed25519
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {rsa_line}\n")
    with pytest.raises(HostKeyError, match="CHANGED"):
        open_remote(sftp_source(server, sftp_client_key, known_hosts=known))


def test_hashed_known_hosts_and_port_22_style_entries(server, sftp_client_key, tmp_path):
    known = server.write_known_hosts(tmp_path / "known_hosts")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True, capture_output=True)
    assert "127.0.0.1" not in known.read_text()  # really hashed
    with open_remote(sftp_source(server, sftp_client_key, known_hosts=known)) as remote:
        assert remote.list() == []
    # An entry without a port is for port 22 only: it must not vouch for this port.
    known.write_text(f"127.0.0.1 {server.host_key_line()}\n")
    with pytest.raises(HostKeyError, match="is not in"):
        open_remote(sftp_source(server, sftp_client_key, known_hosts=known))


def test_scan_and_record_host_key_then_connect(server, sftp_client_key, tmp_path):
    source = sftp_source(server, sftp_client_key, known_hosts=tmp_path / "keys" / "known_hosts")
    key = scan(source).key
    assert f"{key.get_name()} {key.get_base64()}" == server.host_key_line()
    expected = subprocess.run(["ssh-keygen", "-l", "-f", str(server.host_key)], capture_output=True, text=True, check=True)
    assert fingerprint(key) in expected.stdout  # same SHA256:... as OpenSSH prints
    record(source, key)
    with open_remote(source) as remote:
        assert remote.list() == []


def test_key_not_authorized_is_authentication_error(server, stranger_key):
    with pytest.raises(AuthenticationError) as err:
        open_remote(sftp_source(server, stranger_key))
    assert f"refused our key for user {server.username}" in err.value.message
    assert "does not match the public key IBKR holds" in err.value.remedy
    assert str(stranger_key[0]) in err.value.remedy
    assert not is_transient(err.value)


@pytest.mark.parametrize("passphrase", ["wrong passphrase", None])
def test_bad_key_passphrase_is_config_error(server, sftp_client_key, passphrase):
    key = (sftp_client_key[0], sftp_client_key[1], passphrase)
    with pytest.raises(ConfigError) as err:
        open_remote(sftp_source(server, key))
    assert str(sftp_client_key[0]) in err.value.message
    assert "IBREPORTS_KEY_PASSPHRASE" in err.value.remedy
    assert sftp_client_key[2] not in str(err.value)


def test_missing_and_putty_keys_are_config_errors(server, sftp_client_key, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        open_remote(sftp_source(server, sftp_client_key, key_file=tmp_path / "absent"))
    ppk = tmp_path / "ibkr.ppk"
    ppk.write_text("PuTTY-User-Key-File-3: ssh-rsa\nEncryption: none\n")
    with pytest.raises(ConfigError, match="PuTTY"):
        open_remote(sftp_source(server, sftp_client_key, key_file=ppk))


def test_closed_port_is_transient_connection_failure(server, sftp_client_key):
    source = sftp_source(server, sftp_client_key, port=free_port())
    with pytest.raises(ConnectionFailure) as err:
        open_remote(source)
    assert type(err.value) is ConnectionFailure and is_transient(err.value)
    assert "refused" in err.value.message and "port" in err.value.remedy


def test_missing_remote_dir_is_config_error(server, sftp_client_key):
    with open_remote(sftp_source(server, sftp_client_key, remote_dir="/nonexistent/outgoing")) as remote:
        with pytest.raises(ConfigError, match="remote_dir|does not exist"):
            remote.list()


def test_disabled_algorithms_reach_the_transport(server, sftp_client_key):
    # The test server only has an ed25519 host key: disabling it leaves nothing to agree on.
    with pytest.raises(ConnectionFailure, match="algorithm"):
        open_remote(sftp_source(server, sftp_client_key, disabled_algorithms={"keys": ["ssh-ed25519"]}))


def test_proxy_command_carries_the_connection(server, sftp_client_key, tmp_path):
    relay = tmp_path / "relay.py"
    relay.write_text(
        "import socket, sys, threading\n"
        "s = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n"
        "def up():\n"
        "    while data := sys.stdin.buffer.read1(65536):\n"
        "        s.sendall(data)\n"
        "threading.Thread(target=up, daemon=True).start()\n"
        "while data := s.recv(65536):\n"
        "    sys.stdout.buffer.write(data); sys.stdout.buffer.flush()\n"
    )
    (server.root / "outgoing" / "via-proxy.xml").write_bytes(b"relayed")
    source = sftp_source(server, sftp_client_key, host="ibkr.invalid",
                         proxy_command=f"{sys.executable} {relay} 127.0.0.1 {server.port}")
    server.write_known_hosts(source.settings.known_hosts)
    source.settings.known_hosts.write_text(source.settings.known_hosts.read_text().replace("127.0.0.1", "ibkr.invalid"))
    with open_remote(source) as remote:
        remote.download("via-proxy.xml", tmp_path / "got", 7)
    assert (tmp_path / "got").read_bytes() == b"relayed"


def test_dropped_connection_mid_transfer_is_transient_then_reconnects(server, sftp_client_key, tmp_path):
    data = os.urandom(8 * 1024 * 1024)
    (server.root / "outgoing" / "big.xml.pgp").write_bytes(data)
    with open_remote(sftp_source(server, sftp_client_key)) as remote:
        calls = []

        def cut(n: int) -> None:
            if not calls:
                server.drop_sessions()  # as if the network died after the first block
            calls.append(n)

        with pytest.raises(ConnectionFailure) as err:
            remote.download("big.xml.pgp", tmp_path / "first", len(data), cut)
        assert type(err.value) is ConnectionFailure and is_transient(err.value)
        assert not (tmp_path / "first").exists()
        remote.download("big.xml.pgp", tmp_path / "second", len(data))  # a fresh transport, transparently
        assert (tmp_path / "second").read_bytes() == data


def test_server_restart_between_calls_reconnects(server, sftp_client_key, tmp_path):
    (server.root / "outgoing" / "a.xml").write_bytes(b"a")
    with open_remote(sftp_source(server, sftp_client_key)) as remote:
        assert [f.name for f in remote.list()] == ["a.xml"]
        server.restart()
        time.sleep(0.2)  # let paramiko's reader thread notice the closed socket
        assert [f.name for f in remote.list()] == ["a.xml"]


def test_private_key_file_mode_from_fixture(sftp_client_key):
    assert Path(sftp_client_key[0]).stat().st_mode & 0o777 == 0o600
