"""The in-process sFTP sandbox: a real SSH server over loopback, and its fault hooks."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time

import paramiko
import pytest

from ibreports.config import Secret, SourceConfig
from tests.helpers import source_config
from ibreports.errors import ConnectionFailure, RemoteFileError
from ibreports.remote import open_remote
from ibreports.sandbox import SandboxServer, file_attr
from tests.waiting import eventually

HOSTILE = ["../x", "/etc/passwd", "a/b", "..\\x", "a\x00b.xml", "a\r\nb.xml", "x" * 4000]


@pytest.fixture(scope="module")
def client_key() -> paramiko.RSAKey:
    return paramiko.RSAKey.generate(2048)


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "root"
    (root / "outgoing").mkdir(parents=True)
    return root


@pytest.fixture
def sandbox(served, client_key):
    with SandboxServer(served, authorized_key=client_key) as server:
        yield server


def connect(server: SandboxServer, key: paramiko.PKey, username: str = "demo") -> paramiko.SSHClient:
    """A client that trusts only the pinned known_hosts line, like the product does."""
    client = paramiko.SSHClient()
    host, kind, b64 = server.known_hosts_line().split()
    client.get_host_keys().add(host, kind, server.host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect("127.0.0.1", server.port, username=username, pkey=key, look_for_keys=False,
                   allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10)
    return client


def test_serves_files_with_sizes_and_mtimes(sandbox, served, client_key):
    data = os.urandom(200_000)
    path = served / "outgoing" / "U1234567.DailyActivity.20261101.20261101.xml.pgp"
    path.write_bytes(data)
    old = time.time() - 95 * 86400
    os.utime(path, (old, old))
    (served / "outgoing" / "sub").mkdir()
    with connect(sandbox, client_key) as client, client.open_sftp() as sftp:
        listing = {a.filename: a for a in sftp.listdir_attr("outgoing")}
        assert set(listing) == {path.name, "sub"}
        assert listing[path.name].st_size == len(data)
        assert abs(listing[path.name].st_mtime - old) < 2
        with sftp.open(f"outgoing/{path.name}") as fh:
            assert fh.read() == data
        assert sftp.stat(f"/outgoing/{path.name}").st_size == len(data)
    assert sandbox.logins == 1


def test_known_hosts_line_pins_the_served_key(sandbox, tmp_path):
    kh = tmp_path / "known_hosts"
    sandbox.write_known_hosts(kh)
    host, kind, b64 = kh.read_text().split()
    assert host == f"[127.0.0.1]:{sandbox.port}"
    assert kind == sandbox.host_key.get_name()
    keys = paramiko.HostKeys(str(kh))
    assert keys.lookup(host)[kind] == sandbox.host_key
    transport = paramiko.Transport(("127.0.0.1", sandbox.port))
    try:
        transport.start_client(timeout=10)
        assert transport.get_remote_server_key() == sandbox.host_key
    finally:
        transport.close()
    assert sandbox.fingerprint().startswith("SHA256:") and len(sandbox.fingerprint()) == 50


def test_only_the_authorized_key_and_user_get_in(sandbox, client_key):
    other = paramiko.RSAKey.generate(2048)
    with pytest.raises(paramiko.AuthenticationException):
        connect(sandbox, other)
    with pytest.raises(paramiko.AuthenticationException):
        connect(sandbox, client_key, username="root")
    assert sandbox.logins == 0


def test_nothing_outside_root_and_no_writes(sandbox, served, client_key, tmp_path):
    secret = tmp_path / "outside.txt"
    secret.write_text("not yours")
    (served / "outgoing" / "link.txt").symlink_to(secret)
    (served / "outgoing" / "a.xml").write_text("<a/>")
    with connect(sandbox, client_key) as client, client.open_sftp() as sftp:
        for path in ("../outside.txt", "/../../outside.txt", "outgoing/link.txt", "/etc/passwd"):
            with pytest.raises(IOError):
                sftp.open(path).read()
        with pytest.raises(IOError):
            sftp.open("outgoing/new.xml", "w").write(b"x")
        with pytest.raises(IOError):
            sftp.open("outgoing/a.xml", "a").write(b"x")
        assert sftp.normalize("outgoing/../..") == "/"
    assert not (served / "outgoing" / "new.xml").exists()
    assert (served / "outgoing" / "a.xml").read_text() == "<a/>"


def test_remove(sandbox, served, client_key):
    (served / "outgoing" / "done.xml").write_text("<x/>")
    with connect(sandbox, client_key) as client, client.open_sftp() as sftp:
        sftp.remove("outgoing/done.xml")
        with pytest.raises(IOError):
            sftp.remove("outgoing/done.xml")
        with pytest.raises(IOError):
            sftp.remove("outgoing")
    assert not (served / "outgoing" / "done.xml").exists()
    assert (served / "outgoing").is_dir()


def test_listing_override_serves_hostile_names_verbatim(sandbox, client_key):
    sandbox.listing_override = lambda: [file_attr(n, size=10, mtime=1_700_000_000) for n in HOSTILE]
    with connect(sandbox, client_key) as client, client.open_sftp() as sftp:
        listed = sftp.listdir_attr("outgoing")
    assert [a.filename for a in listed] == HOSTILE
    assert all(a.st_size == 10 and a.st_mtime == 1_700_000_000 for a in listed)


def test_drop_after_bytes_cuts_the_connection_then_recovers(sandbox, served, client_key, tmp_path):
    data = os.urandom(1_000_000)
    (served / "outgoing" / "big.xml.pgp").write_bytes(data)
    sandbox.drop_after_bytes = 300_000
    sandbox.drop_limit = 1
    with connect(sandbox, client_key) as client, client.open_sftp() as sftp:
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            with open(tmp_path / "part", "wb") as fh:
                sftp.getfo("outgoing/big.xml.pgp", fh)
        assert not client.get_transport().is_active()
    assert sandbox.drops == 1
    assert (tmp_path / "part").stat().st_size <= 300_000
    # The drop budget is spent: the next connection gets the whole file.
    with connect(sandbox, client_key) as client, client.open_sftp() as sftp:
        with sftp.open("outgoing/big.xml.pgp") as fh:
            assert fh.read() == data
    assert sandbox.drops == 1


def test_drop_every_time_without_a_limit(sandbox, served, client_key):
    (served / "outgoing" / "f").write_bytes(b"a" * 50_000)
    sandbox.drop_after_bytes = 0
    for _ in range(2):
        with connect(sandbox, client_key) as client, client.open_sftp() as sftp:
            with pytest.raises((paramiko.SSHException, EOFError, OSError)):
                sftp.open("outgoing/f").read()
    assert sandbox.drops == 2


def test_grow_on_open_and_lie_about_size(sandbox, served, client_key):
    (served / "outgoing" / "growing.xml").write_bytes(b"<a>" * 100)
    (served / "outgoing" / "liar.xml").write_bytes(b"12345")
    sandbox.grow_on_open = {"growing.xml": b"<more/>"}
    sandbox.lie_about_size = {"liar.xml": 99}
    with connect(sandbox, client_key) as client, client.open_sftp() as sftp:
        listed = {a.filename: a.st_size for a in sftp.listdir_attr("outgoing")}
        assert listed == {"growing.xml": 300, "liar.xml": 99}
        with sftp.open("outgoing/growing.xml") as fh:
            assert fh.read() == b"<a>" * 100 + b"<more/>"
        assert sftp.stat("outgoing/liar.xml").st_size == 99
        with sftp.open("outgoing/liar.xml") as fh:
            assert fh.read() == b"12345"


def test_stop_closes_connections_and_threads(served, client_key):
    before = set(threading.enumerate())
    server = SandboxServer(served, authorized_key=client_key).start()
    clients = [connect(server, client_key) for _ in range(3)]
    sftps = [c.open_sftp() for c in clients]
    assert all(c.get_transport().is_active() for c in clients)
    server.stop()
    assert eventually(lambda: not any(c.get_transport().is_active() for c in clients))
    for s, c in zip(sftps, clients):
        s.close()
        c.close()
    assert eventually(lambda: not [t for t in set(threading.enumerate()) - before if t.is_alive()])
    with pytest.raises(OSError):
        connect(server, client_key)


def test_connections_are_bounded(sandbox, client_key, monkeypatch):
    monkeypatch.setattr("ibreports.sandbox.MAX_CONNECTIONS", 2)
    kept = [connect(sandbox, client_key) for _ in range(2)]
    try:
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            connect(sandbox, client_key)
    finally:
        for c in kept:
            c.close()
    # Slots free up once clients leave (the server notices a moment later).
    def connects() -> bool:
        try:
            connect(sandbox, client_key).close()
            return True
        except (paramiko.SSHException, EOFError, OSError):
            return False

    assert eventually(connects, step=0.2)


def test_faults_as_the_product_client_sees_them(served, sftp_client_key, tmp_path):
    """SftpRemote against the hooks: a drop is a transient ConnectionFailure, then a reconnect."""
    kind, b64 = sftp_client_key[1].split()[:2]
    data = os.urandom(2_000_000)
    (served / "outgoing" / "a.xml").write_bytes(data)
    (served / "outgoing" / "g.xml").write_bytes(b"x" * 1000)
    (served / "outgoing" / "l.xml").write_bytes(b"x" * 1000)
    key = paramiko.PKey.from_type_string(kind, base64.b64decode(b64))
    with SandboxServer(served, authorized_key=key, username="ibkr") as server:
        server.drop_after_bytes, server.drop_limit = 500_000, 1
        server.grow_on_open = {"g.xml": b"more"}
        server.lie_about_size = {"l.xml": 5000}
        source = sandbox_source(server, sftp_client_key, tmp_path)
        with open_remote(source) as remote:
            assert {f.name: f.size for f in remote.list()} == {"a.xml": 2_000_000, "g.xml": 1000, "l.xml": 5000}
            with pytest.raises(ConnectionFailure) as broke:
                remote.download("a.xml", tmp_path / "a1", len(data))
            assert type(broke.value) is ConnectionFailure  # transient: worth a retry
            for name, size in (("g.xml", 1000), ("l.xml", 5000)):
                with pytest.raises(RemoteFileError):
                    remote.download(name, tmp_path / name, size)
                assert not (tmp_path / name).exists()
            remote.download("a.xml", tmp_path / "a2", len(data))
        assert (tmp_path / "a2").read_bytes() == data
        assert (server.drops, server.logins) == (1, 2)


def test_a_server_that_caps_read_sizes_still_gives_exact_files(served, sftp_client_key, tmp_path):
    """SftpRemote asks for 127 KiB reads; a server answering with less must not corrupt or stall a file."""
    kind, b64 = sftp_client_key[1].split()[:2]
    data = os.urandom(3_000_017)
    (served / "outgoing" / "big.xml.pgp").write_bytes(data)
    key = paramiko.PKey.from_type_string(kind, base64.b64decode(b64))
    with SandboxServer(served, authorized_key=key, username="ibkr") as server:
        server.max_read = 32768
        source = sandbox_source(server, sftp_client_key, tmp_path)
        with open_remote(source) as remote:
            digest = remote.download("big.xml.pgp", tmp_path / "big", len(data))
    assert (tmp_path / "big").read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()


def sandbox_source(server: SandboxServer, sftp_client_key, tmp_path) -> SourceConfig:
    """The product's view of the sandbox: an sFTP source with the server's key pinned."""
    server.write_known_hosts(tmp_path / "kh")
    return source_config(
        "sftp", name="sandbox", host=server.host, port=server.port, username="ibkr",
        key_file=sftp_client_key[0], key_passphrase=Secret(sftp_client_key[2], "test", tmp_path),
        known_hosts=tmp_path / "kh", remote_dir="outgoing", timeout=10.0, settle_seconds=0,
    )
