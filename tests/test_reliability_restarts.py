"""The server restarts in the middle of a run: the run fails cleanly or recovers; the next run completes."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy, Rule
from tests.reliability import (
    assert_archived_exactly, cli_env, local_archive_toml, local_objects, run_cli, seed, sftp_toml, start_cli,
    write_config,
)
from tests.waiting import eventually


@pytest.mark.parametrize("after_bytes", [30_000, 500_000, 1_000_000])  # of about 1.6 MB on the wire
def test_sshd_restart_mid_run(tmp_path, sshd_factory, sftp_client_key, pgp_key, after_bytes, request):
    server = sshd_factory([sftp_client_key[1]])
    delivery = seed(server.root / "outgoing", pgp_key.public_file, "ibkr-sftp", count=8, size=300_000, plain_every=4)
    tmpdir = Path(tempfile.mkdtemp(prefix="ibr-rst-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(tmpdir, ignore_errors=True))
    env = cli_env(pgp_key, sftp_client_key, tmpdir)
    with FaultProxy(max_seconds=120) as proxy:
        route = proxy.route(server.port)
        route.rate = 1_000_000  # a slow link: the run is still downloading when the server goes away
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{route.port} {server.host_key_line()}\n")
        source = sftp_toml("ibkr-sftp", route.port, server, sftp_client_key, known_hosts)
        cfg = write_config(tmp_path, source, pgp_key, local_archive_toml(tmp_path / "archive"), tmp_path / "staging")
        proc = start_cli(cfg, env, "fetch")
        assert eventually(lambda: route.bytes_down >= after_bytes, timeout=60, step=0.005)
        assert proc.poll() is None  # the restart hits a live, connected run
        at_restart = route.connections
        server.restart()  # every session killed, listener back on the same port with the same host key
        out, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 1, 3), err.decode()[-2000:]
        assert b"Traceback" not in err
        assert proc.returncode != 0 or route.connections > at_restart  # failed cleanly, or reconnected
        assert route.connections >= 2
        objects, temps = local_objects(tmp_path / "archive")
        expected = delivery.expected()
        assert all(expected[k] == v for k, v in objects.items()) and temps == []  # nothing partial
        second = run_cli(cfg, env, "fetch")
        assert second.returncode == 0, second.stdout.decode()[-2000:]
    assert_archived_exactly(local_objects(tmp_path / "archive")[0], expected)
    assert list((tmp_path / "staging").iterdir()) == []
    assert not list(tmpdir.iterdir())


@pytest.mark.parametrize("action", ["drop", "reset"])
def test_server_hangs_up_before_the_banner(tmp_path, sshd_factory, sftp_client_key, pgp_key, action, request):
    """What a restarting server looks like from the client: accepted, then closed before a byte."""
    server = sshd_factory([sftp_client_key[1]])
    tmpdir = Path(tempfile.mkdtemp(prefix="ibr-rst-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(tmpdir, ignore_errors=True))
    with FaultProxy(max_seconds=60) as proxy:
        route = proxy.route(server.port)
        route.rules.append(Rule(after=0, action=action, times=None))
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{route.port} {server.host_key_line()}\n")
        source = sftp_toml("ibkr-sftp", route.port, server, sftp_client_key, known_hosts)
        cfg = write_config(tmp_path, source, pgp_key, local_archive_toml(tmp_path / "archive"), tmp_path / "staging")
        result = run_cli(cfg, cli_env(pgp_key, sftp_client_key, tmpdir), "fetch")
    assert result.returncode == 3
    assert b"Traceback" not in result.stderr, result.stderr.decode()[-1500:]  # no traceback without --debug
    assert b"remedy" in result.stdout + result.stderr or b"ibkr-sftp" in result.stdout
