"""FTP / FTPS specifics against a real pyftpdlib server: credentials, certificates, passive mode."""

from __future__ import annotations

import time

import pytest

import ibreports.remote.ftp as ftp_module
from ibreports.config import Secret
from ibreports.errors import AuthenticationError, ConfigError, ConnectionFailure, is_transient
from ibreports.remote import open_remote
from tests.fixtures.ftp import ftp_source
from tests.fixtures.sshd import free_port


def test_wrong_password_is_authentication_error_without_the_password(ftp_factory, tmp_path):
    server = ftp_factory()
    source = ftp_source(server, password=Secret("not-the-password-xyz", "sources.test-ftp.password", tmp_path))
    with pytest.raises(AuthenticationError) as err:
        open_remote(source)
    assert "password" in err.value.message and server.username in err.value.message
    assert "not-the-password-xyz" not in str(err.value)
    assert not is_transient(err.value)


def test_ftps_with_untrusted_certificate_is_refused(ftp_factory):
    server = ftp_factory(tls=True)
    with pytest.raises(ConnectionFailure) as err:
        open_remote(ftp_source(server, ca_file=None))  # system CAs do not know the test CA
    assert "certificate" in err.value.message and "ca_file" in err.value.remedy


def test_ftps_protects_the_data_channel(ftp_factory, tmp_path):
    server = ftp_factory(tls=True)  # the server refuses clear-text data channels (tls_data_required)
    (server.root / "outgoing" / "a.xml").write_bytes(b"secret statement")
    with open_remote(ftp_source(server)) as remote:
        remote.download("a.xml", tmp_path / "a", 16)
    assert (tmp_path / "a").read_bytes() == b"secret statement"


def test_pasv_address_from_the_server_is_not_trusted(ftp_factory, tmp_path):
    # A server (or a man in the middle) naming another host in its PASV reply must not redirect us.
    server = ftp_factory(pasv_address="10.255.255.1")
    (server.root / "outgoing" / "a.xml").write_bytes(b"data")
    started = time.monotonic()
    with open_remote(ftp_source(server, timeout=30)) as remote:
        assert [f.name for f in remote.list()] == ["a.xml"]
        remote.download("a.xml", tmp_path / "a", 4)
    assert time.monotonic() - started < 15  # far below the 30 s a connect to the named host would wait


def test_blocked_data_channel_names_passive_mode(ftp_factory, tmp_path):
    server = ftp_factory(broken_pasv=True)
    (server.root / "outgoing" / "a.xml").write_bytes(b"data")
    with open_remote(ftp_source(server)) as remote:
        with pytest.raises(ConnectionFailure) as err:
            remote.download("a.xml", tmp_path / "a", 4)
    assert "data connection" in err.value.message
    assert "passive" in err.value.remedy.lower() and "firewall" in err.value.remedy.lower()
    assert not (tmp_path / "a").exists()


def test_closed_port_is_connection_failure(ftp_factory):
    server = ftp_factory()
    with pytest.raises(ConnectionFailure) as err:
        open_remote(ftp_source(server, port=free_port()))
    assert type(err.value) is ConnectionFailure and "refused" in err.value.message


def test_missing_remote_dir_is_config_error(ftp_factory):
    server = ftp_factory()
    with pytest.raises(ConfigError, match="remote_dir"):
        open_remote(ftp_source(server, remote_dir="no-such-folder"))


def test_idle_connection_dropped_by_server_is_replaced(ftp_factory, tmp_path, monkeypatch):
    server = ftp_factory(idle_timeout=2)  # the server hangs up on clients idle this long
    (server.root / "outgoing" / "a.xml").write_bytes(b"data")
    monkeypatch.setattr(ftp_module, "IDLE_CHECK", 0.2)
    with open_remote(ftp_source(server)) as remote:
        time.sleep(3)
        remote.download("a.xml", tmp_path / "a", 4)
    assert (tmp_path / "a").read_bytes() == b"data"
