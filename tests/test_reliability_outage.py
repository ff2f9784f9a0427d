"""The server goes away in the middle of a run: within [run] reconnect_minutes the run reconnects and
finishes; past it the run fails with a connection error (exit 3) and the next run completes. A source
that runs past [run] source_deadline_minutes stops with a clear error and leaves nothing partial.

Real OpenSSH sshd, stopped and started again; a rate-limited proxy keeps the run busy meanwhile.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy, Rule
from tests.fixtures.s3 import s3_test_client
from tests.reliability import (
    assert_archived_exactly, cli_env, ftp_toml, ftp_via_proxy, local_archive_toml, local_objects, run_cli,
    s3_archive_toml, s3_objects, seed, sftp_toml, start_cli, write_config,
)
from tests.waiting import eventually


@pytest.fixture
def tmpdir_(request) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="ibr-out-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
    return folder


def _setup(tmp_path, server, sftp_client_key, pgp_key, route, run_extra: str) -> Path:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{route.port} {server.host_key_line()}\n")
    source = sftp_toml("ibkr-sftp", route.port, server, sftp_client_key, known_hosts)
    cfg = write_config(tmp_path, source, pgp_key, local_archive_toml(tmp_path / "archive"), tmp_path / "staging")
    cfg.write_text(cfg.read_text() + run_extra)  # [run] is the last table
    return cfg


def test_server_back_within_the_window_the_run_finishes(tmp_path, sshd_factory, sftp_client_key, pgp_key, tmpdir_):
    server = sshd_factory([sftp_client_key[1]])
    delivery = seed(server.root / "outgoing", pgp_key.public_file, "ibkr-sftp", count=8, size=300_000, plain_every=4)
    env = cli_env(pgp_key, sftp_client_key, tmpdir_)
    with FaultProxy(max_seconds=180) as proxy:
        route = proxy.route(server.port)
        route.rate = 1_000_000  # a slow link: the run is mid-download when the server goes away
        cfg = _setup(tmp_path, server, sftp_client_key, pgp_key, route, "reconnect_minutes = 5\n")
        proc = start_cli(cfg, env, "fetch")
        assert eventually(lambda: route.bytes_down >= 300_000, timeout=60, step=0.005)
        server.stop()  # killed: every session and the listener
        time.sleep(4)  # away for a while (not a timing assertion: the run must simply outlast it)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]  # still trying, not failed
        server.start()
        out, err = proc.communicate(timeout=150)
    assert proc.returncode == 0, (out + err).decode()[-3000:]
    assert b"trying again" in err and b"Traceback" not in err
    objects, temps = local_objects(tmp_path / "archive")
    assert_archived_exactly(objects, delivery.expected())  # the files in flight were downloaded again
    assert temps == [] and list((tmp_path / "staging").iterdir()) == []


def test_server_away_past_the_window_fails_with_exit_3_and_the_next_run_completes(
        tmp_path, sshd_factory, sftp_client_key, pgp_key, tmpdir_):
    server = sshd_factory([sftp_client_key[1]])
    delivery = seed(server.root / "outgoing", pgp_key.public_file, "ibkr-sftp", count=8, size=300_000, plain_every=4)
    env = cli_env(pgp_key, sftp_client_key, tmpdir_)
    with FaultProxy(max_seconds=180) as proxy:
        route = proxy.route(server.port)
        route.rate = 1_000_000
        cfg = _setup(tmp_path, server, sftp_client_key, pgp_key, route, "reconnect_minutes = 0.05\n")  # 3 s
        proc = start_cli(cfg, env, "fetch")
        assert eventually(lambda: route.bytes_down >= 300_000, timeout=60, step=0.005)
        server.stop()
        out, err = proc.communicate(timeout=150)
        assert proc.returncode == 3, (out + err).decode()[-3000:]
        assert b"stayed away longer than [run] reconnect_minutes" in out + err
        assert b"Traceback" not in err
        objects, temps = local_objects(tmp_path / "archive")
        expected = delivery.expected()
        assert all(expected[k] == v for k, v in objects.items()) and temps == []  # nothing partial
        server.start()
        second = run_cli(cfg, env, "fetch")
        assert second.returncode == 0, second.stdout.decode()[-2000:]
    assert_archived_exactly(local_objects(tmp_path / "archive")[0], expected)
    assert list((tmp_path / "staging").iterdir()) == []


def test_a_source_past_its_deadline_stops_cleanly(tmp_path, sshd_factory, sftp_client_key, pgp_key, tmpdir_):
    server = sshd_factory([sftp_client_key[1]])
    delivery = seed(server.root / "outgoing", pgp_key.public_file, "ibkr-sftp", count=4, size=300_000)
    env = cli_env(pgp_key, sftp_client_key, tmpdir_)
    with FaultProxy(max_seconds=180) as proxy:
        route = proxy.route(server.port)
        route.rate = 50_000  # a server that trickles: 1.2 MB would take 24 s
        cfg = _setup(tmp_path, server, sftp_client_key, pgp_key, route, "source_deadline_minutes = 0.05\n")  # 3 s
        first = run_cli(cfg, env, "fetch")
        assert first.returncode == 3, first.stdout.decode()[-2000:]
        assert b"ran longer than [run] source_deadline_minutes (0.05)" in first.stdout
        assert b"file(s) were left for the next run" in first.stdout and b"Traceback" not in first.stderr
        objects, temps = local_objects(tmp_path / "archive")
        assert len(objects) < 2 * len(delivery.files) and temps == []
        assert list((tmp_path / "staging").iterdir()) == []
        route.rate = None
        cfg.write_text(cfg.read_text().replace("source_deadline_minutes = 0.05", "source_deadline_minutes = 30"))
        assert run_cli(cfg, env, "fetch").returncode == 0
    assert_archived_exactly(local_objects(tmp_path / "archive")[0], delivery.expected())


def test_ftp_data_connections_refused_several_times_in_a_row(tmp_path, ftp_factory, sftp_client_key, pgp_key,
                                                             tmpdir_):
    """Four data connections reset one after the other (more than the three quick retries): the run
    keeps reconnecting with backoff within reconnect_minutes and archives everything."""
    server = ftp_factory()
    delivery = seed(server.root / "outgoing", pgp_key.public_file, "ibkr-ftp", count=2, size=100_000)
    env = cli_env(pgp_key, sftp_client_key, tmpdir_, TEST_FTP_PASSWORD=server.password)
    with FaultProxy(max_seconds=180) as proxy:
        outage = Rule(after=0, action="reset", times=4, skip=1)  # skip: the MLSD listing
        source = ftp_toml("ibkr-ftp", "127.0.0.2", ftp_via_proxy(proxy, server, outage), server, connections=1)
        cfg = write_config(tmp_path, source, pgp_key, local_archive_toml(tmp_path / "archive"), tmp_path / "staging")
        result = run_cli(cfg, env, "fetch")
    assert result.returncode == 0, (result.stdout + result.stderr).decode()[-3000:]
    assert outage.fired == 4
    assert_archived_exactly(local_objects(tmp_path / "archive")[0], delivery.expected())


def test_a_trickled_listing_is_cut_at_the_deadline(tmp_path, sshd_factory, sftp_client_key, pgp_key, tmpdir_):
    server = sshd_factory([sftp_client_key[1]])
    outgoing = server.root / "outgoing"
    outgoing.mkdir(parents=True, exist_ok=True)
    for i in range(3000):  # a listing of roughly 400 kB
        (outgoing / f"U{1000000 + i}.DailyActivity.20261101.20261101.xml.pgp").write_bytes(b"x")
    env = cli_env(pgp_key, sftp_client_key, tmpdir_)
    with FaultProxy(max_seconds=180) as proxy:
        route = proxy.route(server.port)
        route.rate = 30_000  # the listing alone would take about 15 s
        cfg = _setup(tmp_path, server, sftp_client_key, pgp_key, route, "source_deadline_minutes = 0.05\n")  # 3 s
        result = run_cli(cfg, env, "fetch")
    assert result.returncode == 3, (result.stdout + result.stderr).decode()[-2000:]
    assert b"source_deadline_minutes (0.05) while listing" in result.stdout
    assert b"Traceback" not in result.stderr
    assert list((tmp_path / "staging").iterdir()) == []


def _dead_port() -> int:
    """A loopback port nothing listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _s3_outage_run(tmp_path, sshd_factory, sftp_client_key, pgp_key, tmpdir_, proxy, s3_server, bucket,
                   reconnect_minutes: float):
    """Start a run archiving to S3 through the proxy; once it is uploading, the endpoint goes away.

    Returns (route, process, delivery, connections seen when the endpoint went away, moto's port).
    """
    server = sshd_factory([sftp_client_key[1]])
    delivery = seed(server.root / "outgoing", pgp_key.public_file, "ibkr-sftp", count=8, size=300_000, plain_every=4)
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    route = proxy.route(int(s3_server.rsplit(":", 1)[1]))
    route.rate = 200_000  # a slow link to the store: the run is mid-upload when the endpoint goes away
    source = sftp_toml("ibkr-sftp", server.port, server, sftp_client_key, known_hosts)
    cfg = write_config(tmp_path, source, pgp_key, s3_archive_toml(f"http://127.0.0.1:{route.port}", bucket),
                       tmp_path / "staging")
    cfg.write_text(cfg.read_text() + f"reconnect_minutes = {reconnect_minutes}\n")  # [run] is the last table
    proc = start_cli(cfg, cli_env(pgp_key, sftp_client_key, tmpdir_), "fetch")
    assert eventually(lambda: route.bytes_up >= 300_000, timeout=60, step=0.005)
    moto_port = route.target_port
    route.target_port = _dead_port()  # new connections are accepted and closed at once
    proxy.cut_connections()  # and the open ones (boto3's keep-alive pool, uploads in flight) are cut
    return route, proc, delivery, route.connections, moto_port


def test_s3_endpoint_back_within_the_window_the_run_finishes(tmp_path, sshd_factory, sftp_client_key, pgp_key,
                                                            tmpdir_, s3_server, s3_bucket):
    with FaultProxy(max_seconds=180) as proxy:
        route, proc, delivery, before, moto_port = _s3_outage_run(
            tmp_path, sshd_factory, sftp_client_key, pgp_key, tmpdir_, proxy, s3_server, s3_bucket,
            reconnect_minutes=5)
        time.sleep(20)  # away for a while (not a timing assertion: the run must simply outlast it)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]  # still trying, not failed
        assert route.connections > before  # it did try the store while it was away
        route.target_port = moto_port
        out, err = proc.communicate(timeout=150)
    assert proc.returncode == 0, (out + err).decode()[-3000:]
    assert b"archive: " in err and b"trying again" in err and b"Traceback" not in err
    assert_archived_exactly(s3_objects(s3_test_client(s3_server), s3_bucket), delivery.expected())
    assert list((tmp_path / "staging").iterdir()) == []


def test_s3_endpoint_away_past_the_window_fails_with_exit_3(tmp_path, sshd_factory, sftp_client_key, pgp_key,
                                                            tmpdir_, s3_server, s3_bucket):
    with FaultProxy(max_seconds=180) as proxy:
        route, proc, delivery, _, moto_port = _s3_outage_run(
            tmp_path, sshd_factory, sftp_client_key, pgp_key, tmpdir_, proxy, s3_server, s3_bucket,
            reconnect_minutes=0.05)  # 3 s
        out, err = proc.communicate(timeout=150)
    assert proc.returncode == 3, (out + err).decode()[-3000:]
    assert b"archive unreachable" in out and b"Could not reach the S3 endpoint" in out + err
    assert b"Traceback" not in err
    expected = delivery.expected()
    objects = s3_objects(s3_test_client(s3_server), s3_bucket)
    assert len(objects) < len(expected) and all(expected[k] == v for k, v in objects.items())
    assert list((tmp_path / "staging").iterdir()) == []
