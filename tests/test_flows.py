"""The Prefect flows against real servers: sshd, gpg, a local archive, Prefect's test server.

The Prefect test harness (a temporary database and an in-process API) is set up
once for this module only, so the library suite never pays for it.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId,
)
from prefect.testing.utilities import prefect_test_harness

from flows.backfill import backfill_statements
from flows.common import RUN_ARTIFACT_KEY, SUMMARY_ARTIFACT_KEY, fetch_source
from flows.keys import backup_keys, generate_keys
from flows.retrieve import retrieve_statements
from ibreports.cli import main
from tests.fixtures.pgpkeys import encrypt_bytes
from tests.test_alerts import Receiver
from tests.fixtures.sshd import free_port
from tests.test_fetch import PLAIN, UNENCRYPTED, archived_files, seed, sftp_toml, write_config


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def env(monkeypatch, pgp_key, sftp_client_key):
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_SSH_PASSPHRASE", sftp_client_key[2])


@pytest.fixture
def server(sshd_factory, sftp_client_key, pgp_key, env):
    """A real sshd holding the seeded deliveries (3 encrypted, 1 plain)."""
    srv = sshd_factory([sftp_client_key[1]])
    srv.delivered = seed(srv.root / "outgoing", pgp_key.public_file)
    return srv


def make_config(folder: Path, server, key, pgp_key, known_hosts: Path | None = None) -> Path:
    """A config file in its own folder: one sFTP source, a local archive under the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    if known_hosts is None:
        known_hosts = server.write_known_hosts(folder / "known_hosts")
    return write_config(folder, sftp_toml(server, key, known_hosts), pgp_key, f'[archive]\nurl = "{folder / "archive"}"\n')


def flow_run_id(state) -> UUID:
    return state.state_details.flow_run_id


def artifacts(run_id: UUID, key: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )


def table(run_id: UUID) -> list[dict]:
    (artifact,) = artifacts(run_id, RUN_ARTIFACT_KEY)
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


def task_runs(run_id: UUID) -> list:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))


# -- retrieve-statements --------------------------------------------------------------------


def test_daily_flow_archives_exactly_what_the_cli_archives(tmp_path, server, sftp_client_key, pgp_key):
    by_flow = make_config(tmp_path / "flow", server, sftp_client_key, pgp_key)
    by_cli = make_config(tmp_path / "cli", server, sftp_client_key, pgp_key)

    state = retrieve_statements(config=str(by_flow), return_state=True)
    assert main(["--config", str(by_cli), "fetch"]) == 0

    assert state.is_completed(), state.message
    result = state.result()
    assert result["archived"] == len(server.delivered) and result["files"] == len(server.delivered)
    flow_files = archived_files(tmp_path / "flow" / "archive")
    assert flow_files == archived_files(tmp_path / "cli" / "archive")
    assert len(flow_files) == len(PLAIN) * 2 + 1
    for name, data in PLAIN.items():
        account, day = name.split(".")[0], name.split(".")[3]
        assert flow_files[f"statements/{account}/{day[:4]}/{day[4:6]}/{name}"] == data
    # The run record lands in the archive as with the CLI.
    assert list((tmp_path / "flow" / "archive" / "runs").rglob("*.json"))

    rows = table(flow_run_id(state))
    assert sorted(r["file"] for r in rows) == sorted(server.delivered)
    assert {r["outcome"] for r in rows} == {"archived"}
    assert all(r["archive keys"] and r["account"] and r["statement date"].startswith("2026-11") for r in rows)
    (summary,) = artifacts(flow_run_id(state), SUMMARY_ARTIFACT_KEY)
    assert f"{len(server.delivered)} archived" in summary.data

    # One task per source, and a second run finds everything archived.
    assert [t.name.startswith("fetch-ibkr-sftp") for t in task_runs(flow_run_id(state))] == [True]
    again = retrieve_statements(config=str(by_flow), return_state=True)
    assert again.result()["already_archived"] == len(server.delivered)
    assert again.result()["archived"] == 0


def test_config_defaults_to_ibreports_config_and_is_made_absolute(tmp_path, server, sftp_client_key, pgp_key, monkeypatch):
    cfg = make_config(tmp_path / "conf", server, sftp_client_key, pgp_key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IBREPORTS_CONFIG", os.path.relpath(cfg, tmp_path))
    state = retrieve_statements(dry_run=True, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["planned"] == len(server.delivered)
    assert not (tmp_path / "conf" / "archive").exists() or not archived_files(tmp_path / "conf" / "archive")


def test_a_corrupt_file_fails_the_run_and_the_artifact_lists_it(tmp_path, server, sftp_client_key, pgp_key):
    receiver = Receiver()
    bad = "U1234567.DailyActivity.20261105.20261105.xml.pgp"
    good = tmp_path / "x.pgp"
    encrypt_bytes(pgp_key.public_file, b"<FlexQueryResponse>five</FlexQueryResponse>\n", good)
    blob = bytearray(good.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte in the ciphertext: integrity check must fail
    (server.root / "outgoing" / bad).write_bytes(bytes(blob))
    cfg = make_config(tmp_path / "conf", server, sftp_client_key, pgp_key)
    cfg.write_text(cfg.read_text() + f'\n[alerts]\nurls = ["{receiver.url}"]\n')

    try:
        state = retrieve_statements(config=str(cfg), return_state=True)
    finally:
        receiver.close()

    assert state.is_failed()
    assert len(receiver.messages) == 1 and bad in json.dumps(receiver.messages[0])  # the operator is told
    assert "1 of 5 file(s) failed" in state.message and RUN_ARTIFACT_KEY in state.message
    rows = {r["file"]: r for r in table(flow_run_id(state))}
    assert rows[bad]["outcome"] == "failed" and rows[bad]["reason"]
    assert all(r["outcome"] == "archived" for name, r in rows.items() if name != bad)
    files = archived_files(tmp_path / "conf" / "archive")
    assert not any(k.startswith("statements/") and k.endswith("20261105.xml") for k in files)  # no plaintext of it


def test_a_host_key_failure_is_not_retried(tmp_path, server, sshd_factory, sftp_client_key, pgp_key):
    impostor = sshd_factory([sftp_client_key[1]])  # another host key than the one pinned below
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{server.host}]:{server.port} {impostor.host_key_line()}\n")
    cfg = make_config(tmp_path / "conf", server, sftp_client_key, pgp_key, known_hosts=known_hosts)

    state = retrieve_statements(config=str(cfg), return_state=True)

    assert state.is_failed()
    assert "1 of 1 source(s) could not be retrieved" in state.message
    (run,) = task_runs(flow_run_id(state))
    assert run.run_count == 1 and run.state.is_failed()
    assert "HostKeyError" in run.state.message
    assert server.log_text().count("Connection from") == 1
    (summary,) = artifacts(flow_run_id(state), SUMMARY_ARTIFACT_KEY)
    assert "ibkr-sftp" in summary.data and "host key" in summary.data.lower()


def test_a_refused_connection_is_retried(tmp_path, server, sftp_client_key, pgp_key):
    from prefect import flow

    cfg = make_config(tmp_path / "conf", server, sftp_client_key, pgp_key)
    text = cfg.read_text().replace(f"port = {server.port}", f"port = {free_port()}")  # nobody listens there
    cfg.write_text(text)
    quick = fetch_source.with_options(retry_delay_seconds=0, retry_jitter_factor=None)

    @flow
    def probe() -> None:
        quick(str(cfg), "ibkr-sftp")

    state = probe(return_state=True)
    assert state.is_failed()
    (run,) = task_runs(flow_run_id(state))
    assert run.run_count == 4  # retries=3: the first attempt plus three retries
    assert "ConnectionFailure" in run.state.message


def test_runs_share_a_per_server_concurrency_limit(tmp_path, server, sftp_client_key, pgp_key, caplog):
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterState, TaskRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.concurrency.sync import concurrency

    name = f"ibkr-{server.host}"
    cfg = make_config(tmp_path / "conf", server, sftp_client_key, pgp_key)
    running = TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING])))
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        try:
            with ThreadPoolExecutor(1) as pool:
                with concurrency(name, occupy=1, strict=True):  # another run holds the only slot
                    future = pool.submit(retrieve_statements, config=str(cfg), return_state=True)
                    while not client.read_task_runs(task_run_filter=running):
                        time.sleep(0.1)
                    time.sleep(1.5)  # ample time to connect, were the limit ignored
                    assert "Connection from" not in server.log_text() and not future.done()
                state = future.result(timeout=60)
            assert state.is_completed(), state.message
            assert server.log_text().count("Connection from") == 1
            assert client.read_global_concurrency_limit_by_name(name).active_slots == 0
        finally:
            client.delete_global_concurrency_limit_by_name(name)
    assert "do not exist" not in caplog.text


def test_fan_out_starts_one_flow_run_per_source(tmp_path):
    cfg = tmp_path / "ibreports.toml"
    cfg.write_text(
        "".join(
            f'[[sources]]\nname = "{n}"\nkind = "ftp"\nusername = "u"\npassword = "env:NOPE"\n' for n in ("a", "b")
        )
    )
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("retrieve-statements")
        deployment_id = client.create_deployment(flow_id=flow_id, name="per-source", entrypoint="flows/retrieve.py:retrieve_statements")

    state = retrieve_statements(config=str(cfg), fan_out=True, return_state=True)

    assert state.is_completed(), state.message
    started = state.result()["fan_out"]
    assert sorted(started) == ["a", "b"]
    with get_client(sync_client=True) as client:
        for name, run_id in started.items():
            run = client.read_flow_run(UUID(run_id))
            assert run.deployment_id == deployment_id
            assert run.parameters["sources"] == [name] and run.parameters["config"] == str(cfg)
            assert run.parent_task_run_id is not None  # linked to the parent run in the UI


# -- backfill-statements --------------------------------------------------------------------


def test_backfill_archives_only_the_range(tmp_path, server, sftp_client_key, pgp_key):
    cfg = make_config(tmp_path / "conf", server, sftp_client_key, pgp_key)
    state = backfill_statements(start=date(2026, 11, 2), end=date(2026, 11, 3), config=str(cfg), return_state=True)
    assert state.is_completed(), state.message
    files = archived_files(tmp_path / "conf" / "archive")
    statements = sorted(k for k in files if k.startswith("statements/"))
    assert statements == [
        "statements/F1234567/2026/11/F1234567.TradeConfirms.20261103.20261103.xml",
        "statements/U7654321/2026/11/U7654321.DailyActivity.20261102.20261102.xml",
    ]
    assert not any(UNENCRYPTED[0] in k for k in files)
    assert sorted(r["file"][:9] for r in table(flow_run_id(state))) == ["F1234567.", "U7654321."]


def test_backfill_of_an_empty_range_does_nothing_and_says_so(tmp_path, server, sftp_client_key, pgp_key, caplog):
    cfg = make_config(tmp_path / "conf", server, sftp_client_key, pgp_key)
    with caplog.at_level(logging.INFO):
        state = backfill_statements(start=date(2025, 1, 1), end=date(2025, 1, 31), config=str(cfg), return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["files"] == 0
    assert "no files between 2025-01-01 and 2025-01-31" in caplog.text
    assert archived_files(tmp_path / "conf" / "archive") == {}


def test_backfill_with_start_after_end_fails_clearly(tmp_path):
    state = backfill_statements(
        start=date(2026, 8, 31), end=date(2026, 8, 1), config=str(tmp_path / "absent.toml"), return_state=True
    )
    assert state.is_failed()
    assert "start 2026-08-31 is after end 2026-08-01" in state.message


# -- keys -----------------------------------------------------------------------------------


def test_generate_then_back_up_keys_verified_by_a_restore(tmp_path, monkeypatch):
    monkeypatch.setenv("IBREPORTS_KEY_PASSPHRASE", "flow key passphrase 42")
    monkeypatch.delenv("IBREPORTS_BACKUP_PASSPHRASE", raising=False)
    keys = tmp_path / "keys"
    made = generate_keys(dir=str(keys), rsa_bits=2048, pgp_bits=2048, email="ops@example.com")
    assert made["ssh_fingerprint"].startswith("SHA256:") and len(made["pgp_fingerprint"]) == 40
    assert stat.S_IMODE((keys / "ibkr_sftp_rsa").stat().st_mode) == 0o600
    assert "flow key passphrase 42" not in json.dumps(made)

    from prefect.blocks.system import Secret

    Secret(value="flow backup passphrase 7").save("ibr-backup-passphrase", overwrite=True)
    state = backup_keys(
        dir=str(keys), to=str(tmp_path / "backups" / "keys.bundle"), passphrase_block="ibr-backup-passphrase",
        return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert result["verified"] and result["fingerprints"][""] == {
        "ssh": made["ssh_fingerprint"], "pgp": made["pgp_fingerprint"],
    }
    assert (tmp_path / "backups" / "keys.bundle").stat().st_size > 0
    assert "passphrase" not in json.dumps(result)
    # The bundle opens with the block's passphrase, through `ibreports keys restore`.
    monkeypatch.setenv("IBREPORTS_BACKUP_PASSPHRASE", "flow backup passphrase 7")
    assert main(["keys", "restore", "--from", str(tmp_path / "backups" / "keys.bundle"), "--dir", str(tmp_path / "restored")]) == 0
    assert (tmp_path / "restored" / "ibkr_pgp_secret.asc").read_bytes() == (keys / "ibkr_pgp_secret.asc").read_bytes()
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("ibreports-verify-*/keys/ibkr_sftp_rsa"))


def test_backup_keys_without_a_passphrase_or_destination_fails_clearly(tmp_path, monkeypatch):
    for name in ("IBREPORTS_KEY_PASSPHRASE", "IBREPORTS_BACKUP_PASSPHRASE", "IBREPORTS_KEY_BACKUP_URL"):
        monkeypatch.delenv(name, raising=False)
    state = backup_keys(dir=str(tmp_path), return_state=True)
    assert state.is_failed() and "No backup destination" in state.message
    state = backup_keys(dir=str(tmp_path), to=str(tmp_path / "b"), return_state=True)
    assert state.is_failed() and "IBREPORTS_BACKUP_PASSPHRASE" in state.message
