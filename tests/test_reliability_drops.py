"""Dropped connections at 0 %, 50 % and 99.9 % of a file: sFTP (real sshd behind the fault proxy,
and the sandbox's exact-offset cut), FTP (the data channel through the proxy) and S3 uploads.

Pass criterion: the run retries within its bounds and exits 0; every file is archived
with its hash; no truncated object; the fault really fired.
"""

from __future__ import annotations

import os

import paramiko
import pytest

from ibreports.cli import main
from ibreports.sandbox import SandboxServer
from tests.faultproxy import FaultProxy, HttpFault, Rule
from tests.fixtures.pgpkeys import encrypt_bytes
from tests.fixtures.s3 import s3_test_client
from tests.reliability import (
    Delivery, assert_archived_exactly, ftp_toml, ftp_via_proxy, local_archive_toml, local_objects, s3_archive_toml, s3_objects,
    sftp_toml, write_config,
)

FRACTIONS = [0.0, 0.5, 0.999]
NAME = "U1234567.DailyActivity.20261101.20261101.xml.pgp"


def one_file(outgoing, public_file, source: str, size: int = 600_000) -> Delivery:
    """One encrypted statement of random (incompressible) content plus one plain CSV."""
    outgoing.mkdir(parents=True, exist_ok=True)
    plain = b"<FlexQueryResponse>" + os.urandom(size) + b"</FlexQueryResponse>"
    encrypt_bytes(public_file, plain, outgoing / NAME)
    csv = b"Header,Value\n" + b"Cash,1\n" * 20_000
    (outgoing / "DU7654321.Activity.20261102.20261102.csv").write_bytes(csv)
    return Delivery(source, files={NAME: (outgoing / NAME).read_bytes(), "DU7654321.Activity.20261102.20261102.csv": csv},
                    plain={NAME: plain})


@pytest.fixture
def env(monkeypatch, pgp_key, sftp_client_key):
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_SSH_PASSPHRASE", sftp_client_key[2])


@pytest.fixture
def proxy():
    with FaultProxy(max_seconds=240) as p:
        yield p


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_sftp_connection_dropped_mid_file(tmp_path, sshd_factory, sftp_client_key, pgp_key, env, proxy, fraction):
    server = sshd_factory([sftp_client_key[1]])
    delivery = one_file(server.root / "outgoing", pgp_key.public_file, "ibkr-sftp")
    route = proxy.route(server.port)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{route.port} {server.host_key_line()}\n")
    source = sftp_toml("ibkr-sftp", route.port, server, sftp_client_key, known_hosts, connections=1)
    # Calibrate on the wire: bytes before the data (a dry run lists only), then a whole run.
    calib = write_config(tmp_path, source, pgp_key, local_archive_toml(tmp_path / "calib"), tmp_path / "staging")
    assert main(["--config", str(calib), "fetch", "--dry-run"]) == 0
    before_data = route.bytes_down
    assert main(["--config", str(calib), "fetch"]) == 0
    data = route.bytes_down - 2 * before_data
    assert data > 600_000
    route.rules.append(Rule(after=before_data + int(fraction * data), action="drop"))
    cfg = write_config(tmp_path, source, pgp_key, local_archive_toml(tmp_path / "archive"), tmp_path / "staging")
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert route.rules[0].fired == 1
    objects, temps = local_objects(tmp_path / "archive")
    assert_archived_exactly(objects, delivery.expected())
    assert temps == [] and list((tmp_path / "staging").iterdir()) == []


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_sandbox_cuts_at_an_exact_offset(tmp_path, sftp_client_key, pgp_key, env, fraction):
    root = tmp_path / "served"
    delivery = one_file(root / "outgoing", pgp_key.public_file, "ibkr-sftp")
    size = len(delivery.files[NAME])
    key = paramiko.RSAKey.from_private_key_file(str(sftp_client_key[0]), password=sftp_client_key[2])
    with SandboxServer(root, authorized_key=key) as sandbox:
        sandbox.drop_after_bytes, sandbox.drop_limit = int(size * fraction), 1
        known_hosts = sandbox.write_known_hosts(tmp_path / "known_hosts")
        source = sftp_toml("ibkr-sftp", sandbox.port, sandbox, sftp_client_key, known_hosts).replace(
            f'remote_dir = "{root / "outgoing"}"', 'remote_dir = "outgoing"')
        cfg = write_config(tmp_path, source, pgp_key, local_archive_toml(tmp_path / "archive"), tmp_path / "staging")
        assert main(["--config", str(cfg), "fetch"]) == 0
        assert sandbox.drops == 1 and sandbox.logins >= 2  # cut once, then a new login finished it
    objects, temps = local_objects(tmp_path / "archive")
    assert_archived_exactly(objects, delivery.expected())
    assert temps == [] and list((tmp_path / "staging").iterdir()) == []


@pytest.mark.parametrize("action", ["drop", "reset"])
@pytest.mark.parametrize("fraction", FRACTIONS)
def test_ftp_data_channel_dropped_mid_file(tmp_path, ftp_factory, pgp_key, env, proxy, monkeypatch, fraction, action):
    server = ftp_factory()
    monkeypatch.setenv("TEST_FTP_PASSWORD", server.password)
    delivery = one_file(server.root / "outgoing", pgp_key.public_file, "ibkr-ftp")
    cut = Rule(after=int(fraction * len(delivery.files[NAME])), action=action, skip=1)  # skip: the MLSD listing
    source = ftp_toml("ibkr-ftp", "127.0.0.2", ftp_via_proxy(proxy, server, cut), server, connections=1)
    cfg = write_config(tmp_path, source, pgp_key, local_archive_toml(tmp_path / "archive"), tmp_path / "staging")
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert cut.fired == 1
    objects, temps = local_objects(tmp_path / "archive")
    assert_archived_exactly(objects, delivery.expected())
    assert temps == [] and list((tmp_path / "staging").iterdir()) == []


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_s3_upload_dropped_mid_body(tmp_path, sshd_factory, sftp_client_key, pgp_key, env, proxy, s3_server,
                                    s3_versioned_bucket, fraction):
    server = sshd_factory([sftp_client_key[1]])
    delivery = one_file(server.root / "outgoing", pgp_key.public_file, "ibkr-sftp")
    route = proxy.route(int(s3_server.rsplit(":", 1)[1]))
    route.http.append(HttpFault(action="drop", at=fraction, path_contains=b"/statements/", times=1))
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    source = sftp_toml("ibkr-sftp", server.port, server, sftp_client_key, known_hosts)
    archive = s3_archive_toml(f"http://127.0.0.1:{route.port}", s3_versioned_bucket)
    cfg = write_config(tmp_path, source, pgp_key, archive, tmp_path / "staging")
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert route.http[0].fired == 1
    client = s3_test_client(s3_server)
    assert_archived_exactly(s3_objects(client, s3_versioned_bucket), delivery.expected())
    versions = [v for v in client.list_object_versions(Bucket=s3_versioned_bucket).get("Versions", [])
                if "/runs/" not in v["Key"]]
    assert len(versions) == len(delivery.expected())  # the cut upload left no (truncated) version
    assert list((tmp_path / "staging").iterdir()) == []
