"""The Prefect flows against real servers: sshd, FTP, gpg, a local or S3 (moto) archive, Prefect's test server.

The Prefect test harness (a temporary database and an in-process API) is set up
once for this module only, so the library suite never pays for it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter, DeploymentFilterId,
    FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId,
)
from prefect.flow_engine import run_flow
from prefect.testing.utilities import prefect_test_harness

from flows.backfill import backfill_statements
from flows.common import RUN_ARTIFACT_KEY, SUMMARY_ARTIFACT_KEY, fetch_source
from flows.keys import backup_keys, generate_keys
from flows.local_api import startup_timeout
from flows.retrieve import retrieve_statements
from ibreports.cli import main
from tests.configs import ftp_toml, sftp_toml
from tests.fixtures.pgpkeys import encrypt_bytes
from tests.fixtures.s3 import s3_test_client
from tests.fixtures.sshd import free_port
from tests.helpers import PLAIN, UNENCRYPTED, Receiver, archived_files, seed, write_config
from tests.flowhelpers import artifacts, flow_run_id
from tests.waiting import eventually


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    # A fresh database is created and migrated on start: give a busy machine the demo's wait, not 20-60 s.
    with prefect_test_harness(server_startup_timeout=startup_timeout()):
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


class Archive:
    """Where a test config archives: a folder beside the config, or a prefix of a moto S3 bucket."""

    def __init__(self, endpoint: str | None = None, bucket: str | None = None) -> None:
        self.endpoint, self.bucket = endpoint, bucket

    def toml(self, folder: Path) -> str:
        if not self.bucket:
            return f'[archive]\nurl = "{folder / "archive"}"\n'
        return f'[archive]\nurl = "s3://{self.bucket}/{folder.name}"\nendpoint_url = "{self.endpoint}"\nregion = "us-east-1"\n'

    def keys(self, folder: Path) -> list[str]:
        """Every key under the config's archive root, run records included."""
        if not self.bucket:
            root = folder / "archive"
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
        pages = s3_test_client(self.endpoint).get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{folder.name}/")
        return sorted(o["Key"][len(folder.name) + 1:] for page in pages for o in page.get("Contents", []))

    def files(self, folder: Path) -> dict[str, bytes]:
        """Key -> bytes of everything but run records (as tests.test_fetch.archived_files)."""
        if not self.bucket:
            return archived_files(folder / "archive") if (folder / "archive").exists() else {}
        client = s3_test_client(self.endpoint)
        return {
            k: client.get_object(Bucket=self.bucket, Key=f"{folder.name}/{k}")["Body"].read()
            for k in self.keys(folder) if not k.startswith("runs/")
        }

    def write(self, folder: Path, key: str, data: bytes) -> None:
        """Change an archived object behind ibreports' back."""
        if not self.bucket:
            (folder / "archive" / key).write_bytes(data)
        else:
            s3_test_client(self.endpoint).put_object(Bucket=self.bucket, Key=f"{folder.name}/{key}", Body=data)

    def versions(self, folder: Path) -> dict[str, tuple]:
        """Key -> a token that changes whenever the object is written again."""
        if not self.bucket:
            stats = {k: (folder / "archive" / k).stat() for k in self.files(folder)}
            return {k: (st.st_ino, st.st_mtime_ns) for k, st in stats.items()}
        found: dict[str, tuple] = {}
        listing = s3_test_client(self.endpoint).list_object_versions(Bucket=self.bucket, Prefix=f"{folder.name}/")
        for version in listing.get("Versions", []):
            key = version["Key"][len(folder.name) + 1:]
            if not key.startswith("runs/"):
                found[key] = found.get(key, ()) + (version["VersionId"],)
        return found


@pytest.fixture(params=["local", "s3"])
def archive(request) -> Archive:
    """Each test using it runs twice: local folder archive, then S3 on the moto server (versioned bucket)."""
    if request.param == "local":
        return Archive()
    return Archive(request.getfixturevalue("s3_server"), request.getfixturevalue("s3_versioned_bucket"))


def make_config(folder: Path, server, key, pgp_key, known_hosts: Path | None = None, archive: Archive | None = None,
                **source) -> Path:
    """A config file in its own folder: one sFTP source, a local archive under the folder unless ``archive``."""
    folder.mkdir(parents=True, exist_ok=True)
    if known_hosts is None:
        known_hosts = server.write_known_hosts(folder / "known_hosts")
    return write_config(folder, sftp_toml(server, key, known_hosts, **source), pgp_key, (archive or Archive()).toml(folder))


def table(run_id: UUID) -> list[dict]:
    (artifact,) = artifacts(run_id, RUN_ARTIFACT_KEY)
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


def task_runs(run_id: UUID) -> list:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))


def run_logs(run_id: UUID, last: str) -> list[str]:
    """The flow run's log messages (task runs' included), once one containing ``last`` arrived."""
    with get_client(sync_client=True) as client:
        logs = [log.message for log in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))]
    return logs if any(last in m for m in logs) else []


def retrieve_with_alerts(cfg: Path, receiver: Receiver):
    """A daily flow run whose alerts go to ``receiver`` (closed afterwards)."""
    cfg.write_text(cfg.read_text() + f'\n[alerts]\nurls = ["{receiver.url}"]\n')
    try:
        return retrieve_statements(config=str(cfg), return_state=True)
    finally:
        receiver.close()


# -- retrieve-statements --------------------------------------------------------------------


def test_daily_flow_archives_exactly_what_the_cli_archives(tmp_path, server, sftp_client_key, pgp_key, archive):
    by_flow = make_config(tmp_path / "flow", server, sftp_client_key, pgp_key, archive=archive)
    by_cli = make_config(tmp_path / "cli", server, sftp_client_key, pgp_key, archive=archive)

    state = retrieve_statements(config=str(by_flow), return_state=True)
    assert main(["--config", str(by_cli), "fetch"]) == 0

    assert state.is_completed(), state.message
    result = state.result()
    assert result["archived"] == len(server.delivered) and result["files"] == len(server.delivered)
    assert state.message == f"{len(server.delivered)} archived, 0 failed"  # the counts, in the UI's state
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id(state))
    # Named for what it is, when it was due and its id: readable, and never shared by two runs.
    assert run.name == f"daily-{run.expected_start_time.strftime('%Y-%m-%dT%H:%MZ')}-{str(run.id)[:6]}"
    flow_files = archive.files(tmp_path / "flow")
    assert flow_files == archive.files(tmp_path / "cli")
    assert len(flow_files) == len(PLAIN) * 2 + 1
    for name, data in PLAIN.items():
        account, day = name.split(".")[0], name.split(".")[3]
        assert flow_files[f"statements/{account}/{day[:4]}/{day[4:6]}/{name}"] == data
    # The run record lands in the archive as with the CLI.
    assert any(k.startswith("runs/") and k.endswith(".json") for k in archive.keys(tmp_path / "flow"))

    rows = table(flow_run_id(state))
    assert sorted(r["file"] for r in rows) == sorted(server.delivered)
    assert {r["outcome"] for r in rows} == {"archived"}
    assert list(rows[0])[:3] == ["outcome", "file", "statement date"]  # what happened first: on screen in the UI
    assert all(r["archive keys"] and r["account"] and r["statement date"].startswith("2026-11") for r in rows)
    assert {r["signature"] for r in rows if r["file"].endswith(".pgp")} == {"unsigned"}  # the signature column
    (summary,) = artifacts(flow_run_id(state), SUMMARY_ARTIFACT_KEY)
    assert f"{len(server.delivered)} archived" in summary.data

    # One task per source, and a second run finds everything archived and writes nothing.
    assert [t.name.startswith("fetch-ibkr-sftp") for t in task_runs(flow_run_id(state))] == [True]
    before = archive.versions(tmp_path / "flow")
    again = retrieve_statements(config=str(by_flow), return_state=True)
    assert again.message == f"0 archived, 0 failed, {len(server.delivered)} already archived"
    assert again.result()["already_archived"] == len(server.delivered)
    assert again.result()["archived"] == 0
    assert archive.versions(tmp_path / "flow") == before


def test_a_prefect_secret_block_reference_is_resolved(tmp_path, server, sftp_client_key, pgp_key):
    from prefect.blocks.system import Secret

    Secret(value=sftp_client_key[2]).save("ibr-test-ssh-passphrase", overwrite=True)
    cfg = make_config(tmp_path / "conf", server, sftp_client_key, pgp_key, key_passphrase="prefect:ibr-test-ssh-passphrase")
    state = retrieve_statements(config=str(cfg), return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["archived"] == len(server.delivered)
    assert sftp_client_key[2] not in json.dumps(table(flow_run_id(state)))


def test_a_missing_secret_block_fails_clearly_and_its_hint_creates_it(tmp_path, server, sftp_client_key, pgp_key):
    from prefect.settings import PREFECT_API_URL

    block = "ibr-test-missing-block"
    cfg = make_config(tmp_path / "conf", server, sftp_client_key, pgp_key, key_passphrase=f"prefect:{block}")
    state = retrieve_statements(config=str(cfg), return_state=True)

    assert state.is_failed()
    (run,) = task_runs(flow_run_id(state))
    assert run.run_count == 1 and "ConfigError" in run.state.message  # a configuration error: never retried
    (summary,) = artifacts(flow_run_id(state), SUMMARY_ARTIFACT_KEY)
    assert f"refers to Prefect Secret block '{block}', which could not be loaded" in summary.data
    assert "Connection from" not in server.log_text()  # nothing was tried with a missing secret

    # The remedy is a command that works: run it as an operator would, the passphrase typed at the prompt.
    command = re.search(r'python -c "(.+?)"', summary.data).group(1)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run([sys.executable, "-c", command], input=sftp_client_key[2] + "\n", text=True, env=env,
                          capture_output=True, timeout=60, start_new_session=True)  # no tty: getpass reads stdin
    assert done.returncode == 0, done.stderr
    again = retrieve_statements(config=str(cfg), return_state=True)
    assert again.is_completed(), again.message


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
    state = retrieve_with_alerts(make_config(tmp_path / "conf", server, sftp_client_key, pgp_key), receiver)

    assert state.is_failed()
    # The operator is told (besides the coverage alert: the fixtures' one-day kinds are daily, their later days gaps).
    told = [m for m in receiver.messages if "coverage gap" not in m["title"]]
    assert len(told) == 1 and bad in json.dumps(told[0])
    assert "1 of 5 file(s) failed" in state.message and RUN_ARTIFACT_KEY in state.message
    # The source's task is Failed too (not a green task in a red run), and not retried.
    (task_run,) = task_runs(flow_run_id(state))
    assert task_run.state.is_failed() and task_run.run_count == 1
    assert task_run.state.message == "ibkr-sftp: 1 of 5 file(s) failed"
    # RunFailed is logged once, with no traceback anywhere in the run's logs.
    logs = eventually(lambda: run_logs(flow_run_id(state), "Finished in state Failed(\"RunFailed"), timeout=30, step=0.3)
    assert sum(m.startswith("RunFailed: 1 of 5 file(s) failed") for m in logs) == 1, logs
    assert not [m for m in logs if "Traceback" in m], logs
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
    # A security refusal, said as one: never "unreachable", in the run's state or its artifact.
    assert "source **ibkr-sftp** host key refused:" in summary.data
    assert "1 source(s) host key refused" in state.message and "unreachable" not in state.message
    assert "unreachable" not in summary.data


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


def test_an_old_unarchived_file_is_reported_at_risk_at_the_end_of_the_run(tmp_path, server, sftp_client_key, pgp_key):
    receiver = Receiver()
    bad = server.root / "outgoing" / "U1234567.DailyActivity.20260828.20260828.xml.pgp"
    bad.write_bytes(b"\x85\x01\x0c" + os.urandom(300))  # an OpenPGP packet header, then garbage
    old = time.time() - 95 * 86400  # purge_days 100: five days left
    os.utime(bad, (old, old))
    state = retrieve_with_alerts(make_config(tmp_path / "conf", server, sftp_client_key, pgp_key), receiver)

    assert state.is_failed()
    assert any("at risk of the purge" in json.dumps(m) and bad.name in json.dumps(m) for m in receiver.messages)
    (summary,) = artifacts(flow_run_id(state), SUMMARY_ARTIFACT_KEY)
    assert f"`{bad.name}` not archived, 5 day(s) before the server purges it" in summary.data

    def warnings() -> list[str]:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id(state)])))
        return [log.message for log in logs if log.level == logging.WARNING and bad.name in log.message]

    assert eventually(warnings, timeout=15, step=0.2) == [f"{bad.name} is not archived and is purged in 5 day(s)"]


# -- fan-out --------------------------------------------------------------------------------


def per_source_deployment() -> UUID:
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("retrieve-statements")
        return client.create_deployment(flow_id=flow_id, name="per-source", entrypoint="flows/retrieve.py:retrieve_statements")


def play_worker(deployment_id: UUID, count: int) -> threading.Thread:
    """Stand in for a worker: run the deployment's first ``count`` new flow runs in this process."""

    def work() -> None:
        seen: set[UUID] = set()
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while len(seen) < count and time.monotonic() < deadline:
                runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
                for run in runs:
                    if run.id not in seen and run.state and run.state.is_scheduled():
                        seen.add(run.id)
                        run_flow(retrieve_statements, flow_run=run, parameters=run.parameters, return_type="state")
                time.sleep(0.2)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_fan_out_waits_for_its_children_and_fails_when_one_fails(tmp_path, server, sshd_factory, sftp_client_key, pgp_key):
    impostor = sshd_factory([sftp_client_key[1]])
    pinned_wrong = tmp_path / "wrong_known_hosts"
    pinned_wrong.write_text(f"[{server.host}]:{server.port} {impostor.host_key_line()}\n")
    folder = tmp_path / "conf"
    folder.mkdir()
    known_hosts = server.write_known_hosts(folder / "known_hosts")
    cfg = write_config(
        folder,
        sftp_toml(server, sftp_client_key, known_hosts, name="good")
        + sftp_toml(server, sftp_client_key, pinned_wrong, name="bad"),
        pgp_key, Archive().toml(folder),
    )
    worker = play_worker(per_source_deployment(), 2)

    state = retrieve_statements(config=str(cfg), fan_out=True, fan_out_timeout=120, return_state=True)
    worker.join(30)

    assert state.is_failed()
    assert "1 of 2 source run(s) did not complete: bad" in state.message
    (summary,) = artifacts(flow_run_id(state), SUMMARY_ARTIFACT_KEY)
    assert re.search(r"- good: flow run `[0-9a-f-]{36}` \*\*Completed\*\*", summary.data), summary.data
    assert re.search(r"- bad: flow run `[0-9a-f-]{36}` \*\*Failed\*\*: .*could not be retrieved", summary.data), summary.data
    assert len(archived_files(folder / "archive")) == len(PLAIN) * 2 + 1  # the good child archived everything


def test_fan_out_children_that_do_not_finish_in_time_fail_the_run_and_are_cancelled(tmp_path):
    cfg = tmp_path / "ibreports.toml"
    cfg.write_text(
        "".join(
            f'[[sources]]\nname = "{n}"\nkind = "ftp"\nusername = "u"\npassword = "env:NOPE"\n' for n in ("a", "b")
        )
    )
    deployment_id = per_source_deployment()  # no worker picks its runs up

    state = retrieve_statements(config=str(cfg), fan_out=True, fan_out_timeout=1, return_state=True)

    assert state.is_failed()
    assert "2 of 2 source run(s) did not complete: a, b" in state.message
    (summary,) = artifacts(flow_run_id(state), SUMMARY_ARTIFACT_KEY)
    assert summary.data.count("**timed out**: not finished after 1 s; cancelled") == 2
    started = dict(re.findall(r"- (\w+): flow run `([0-9a-f-]{36})`", summary.data))
    assert sorted(started) == ["a", "b"]
    with get_client(sync_client=True) as client:
        for name, run_id in started.items():
            run = client.read_flow_run(UUID(run_id))
            assert run.deployment_id == deployment_id
            assert run.parameters["sources"] == [name] and run.parameters["config"] == str(cfg)
            assert run.parent_task_run_id is not None  # linked to the parent run in the UI
            assert run.state.type.value == "CANCELLED"  # never picked up: cancelled at once, not left Cancelling


# -- the per-server concurrency limit --------------------------------------------------------


@pytest.fixture
def ftp_server(ftp_factory, pgp_key, monkeypatch, env):
    srv = ftp_factory()
    monkeypatch.setenv("TEST_FTP_PASSWORD", srv.password)
    srv.delivered = seed(srv.root / "outgoing", pgp_key.public_file)
    return srv


def ftp_config(folder: Path, srv, pgp_key, **source) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(folder, ftp_toml(srv, **{"allow_plain": True, **source}), pgp_key, Archive().toml(folder))


@pytest.fixture
def server_limit():
    """make(name, limit) creates a global concurrency limit, deleted at teardown."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    made = []

    def make(name: str, limit: int) -> None:
        with get_client(sync_client=True) as client:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
        made.append(name)

    yield make
    with get_client(sync_client=True) as client:
        for name in made:
            client.delete_global_concurrency_limit_by_name(name)


def test_an_ftp_run_occupies_one_slot_per_connection(tmp_path, ftp_server, pgp_key, server_limit):
    from prefect.concurrency.sync import concurrency

    name = f"ibkr-{ftp_server.host}"
    server_limit(name, 3)
    cfg = ftp_config(tmp_path / "conf", ftp_server, pgp_key, connections=2)
    with ThreadPoolExecutor(1) as pool:
        with concurrency(name, occupy=2, strict=True):  # one slot left: too few for two connections
            future = pool.submit(retrieve_statements, config=str(cfg), return_state=True)
            time.sleep(3)
            assert not future.done() and not (tmp_path / "conf" / "archive" / "statements").exists()
            with get_client(sync_client=True) as client:
                assert client.read_global_concurrency_limit_by_name(name).active_slots == 2
        state = future.result(timeout=60)
    assert state.is_completed(), state.message
    assert state.result()["archived"] == len(ftp_server.delivered)


def test_a_limit_below_the_connections_caps_them(tmp_path, ftp_server, pgp_key, server_limit):
    name = f"ibkr-{ftp_server.host}"
    server_limit(name, 1)  # Prefect refuses to occupy more slots than a limit has
    cfg = ftp_config(tmp_path / "conf", ftp_server, pgp_key, connections=4)
    state = retrieve_statements(config=str(cfg), return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["archived"] == len(ftp_server.delivered)


def test_a_server_slot_that_never_frees_fails_the_source_clearly(tmp_path, server, sftp_client_key, pgp_key, server_limit):
    from prefect import flow
    from prefect.concurrency.sync import concurrency

    name = f"ibkr-{server.host}"
    server_limit(name, 1)
    cfg = make_config(tmp_path / "conf", server, sftp_client_key, pgp_key)

    @flow
    def probe() -> None:
        fetch_source(str(cfg), "ibkr-sftp", slot_timeout=1)

    with concurrency(name, occupy=1, strict=True):  # held elsewhere for longer than the run waits
        state = probe(return_state=True)
    assert state.is_failed()
    (run,) = task_runs(flow_run_id(state))
    assert run.run_count == 1  # not retried: waiting longer is the operator's call
    assert f"no 1 slot(s) of concurrency limit '{name}' came free within 1 s" in run.state.message
    assert "Connection from" not in server.log_text()


# -- backfill-statements --------------------------------------------------------------------


def test_backfill_archives_exactly_what_fetch_since_until_archives(tmp_path, server, sftp_client_key, pgp_key, archive):
    by_flow = make_config(tmp_path / "flow", server, sftp_client_key, pgp_key, archive=archive)
    by_cli = make_config(tmp_path / "cli", server, sftp_client_key, pgp_key, archive=archive)

    state = backfill_statements(start=date(2026, 11, 2), end=date(2026, 11, 3), config=str(by_flow), return_state=True)
    assert main(["--config", str(by_cli), "fetch", "--since", "2026-11-02", "--until", "2026-11-03"]) == 0

    assert state.is_completed(), state.message
    files = archive.files(tmp_path / "flow")
    assert files == archive.files(tmp_path / "cli")
    statements = sorted(k for k in files if k.startswith("statements/"))
    assert statements == [
        "statements/F1234567/2026/11/F1234567.TradeConfirms.20261103.20261103.xml",
        "statements/U7654321/2026/11/U7654321.DailyActivity.20261102.20261102.xml",
    ]
    assert not any(UNENCRYPTED[0] in k for k in files)
    assert sorted(r["file"][:9] for r in table(flow_run_id(state))) == ["F1234567.", "U7654321."]
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id(state))
    assert run.name.startswith("backfill-2026-11-02..2026-11-03-")  # says what it is: the range it backfilled


def test_backfill_of_named_sources_touches_only_those(tmp_path, server, sftp_client_key, pgp_key):
    other = server.root / "other"
    other.mkdir()
    encrypt_bytes(pgp_key.public_file, b"<FlexQueryResponse>other</FlexQueryResponse>\n",
                  other / "U5555555.DailyActivity.20261102.20261102.xml.pgp")
    folder = tmp_path / "conf"
    folder.mkdir()
    known_hosts = server.write_known_hosts(folder / "known_hosts")
    cfg = write_config(
        folder,
        sftp_toml(server, sftp_client_key, known_hosts)
        + sftp_toml(server, sftp_client_key, known_hosts, name="ibkr-other", remote_dir=str(other)),
        pgp_key, Archive().toml(folder),
    )

    state = backfill_statements(start=date(2026, 11, 1), end=date(2026, 11, 30), sources=["ibkr-other"],
                                config=str(cfg), return_state=True)

    assert state.is_completed(), state.message
    statements = sorted(k for k in archived_files(folder / "archive") if k.startswith("statements/"))
    assert statements == ["statements/U5555555/2026/11/U5555555.DailyActivity.20261102.20261102.xml"]
    assert [t.name for t in task_runs(flow_run_id(state))] == ["fetch-ibkr-other"]
    assert {r["source"] for r in table(flow_run_id(state))} == {"ibkr-other"}


def test_backfill_with_force_verifies_the_archive_and_rewrites_nothing(tmp_path, server, sftp_client_key, pgp_key, archive):
    folder = tmp_path / "conf"
    cfg = make_config(folder, server, sftp_client_key, pgp_key, archive=archive)
    first = backfill_statements(start=date(2026, 11, 1), end=date(2026, 11, 30), config=str(cfg), return_state=True)
    assert first.is_completed(), first.message
    before = archive.versions(folder)

    forced = backfill_statements(start=date(2026, 11, 1), end=date(2026, 11, 30), force=True, config=str(cfg),
                                 return_state=True)

    assert forced.is_completed(), forced.message
    assert forced.result()["verified"] == len(server.delivered)  # every file fetched and compared again
    assert forced.result()["archived"] == 0
    assert archive.versions(folder) == before  # ... and not one written again
    # The comparison is real: a tampered archive copy fails the forced run and stays as it is.
    name = next(iter(PLAIN))
    key, edited = f"statements/U1234567/2026/11/{name}", b"<FlexQueryResponse>edited</FlexQueryResponse>\n"
    archive.write(folder, key, edited)
    again = backfill_statements(start=date(2026, 11, 1), end=date(2026, 11, 1), force=True, config=str(cfg),
                                return_state=True)
    assert again.is_failed()
    (row,) = table(flow_run_id(again))
    assert row["outcome"] == "failed" and row["code"] == "conflict" and "was not replaced" in row["reason"]
    assert archive.files(folder)[key] == edited


def test_backfill_of_an_empty_range_does_nothing_and_says_so(tmp_path, server, sftp_client_key, pgp_key, caplog):
    cfg = make_config(tmp_path / "conf", server, sftp_client_key, pgp_key)
    with caplog.at_level(logging.INFO):
        state = backfill_statements(start=date(2025, 1, 1), end=date(2025, 1, 31), config=str(cfg), return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["files"] == 0
    assert "no files between 2025-01-01 and 2025-01-31" in caplog.text
    assert "do not exist" not in caplog.text  # no per-server limit: unthrottled, and no warning about it
    assert archived_files(tmp_path / "conf" / "archive") == {}


def test_backfill_with_start_after_end_fails_clearly(tmp_path):
    state = backfill_statements(
        start=date(2026, 8, 31), end=date(2026, 8, 1), config=str(tmp_path / "absent.toml"), return_state=True
    )
    assert state.is_failed()
    assert "start 2026-08-31 is after end 2026-08-01" in state.message


def test_a_failed_flow_run_leaves_nothing_readable_by_others_under_prefect_home(tmp_path):
    """A flow-run process (it imports the flows) makes a PREFECT_HOME left open by the umask private,
    and what Prefect keeps there after a failed run stays inside it. An expected failure is a Failed
    state with its message, so its exception is not written there at all."""
    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "prefect-home"
    home.mkdir()
    home.chmod(0o755)  # as a umask of 022 creates it
    command = ("from datetime import date; from flows.backfill import backfill_statements; "
               "state = backfill_statements(start=date(2026, 8, 31), end=date(2026, 8, 1), "
               f"config={str(tmp_path / 'absent.toml')!r}, return_state=True); print(state.type.value)")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run([sys.executable, "-c", command], env=env, cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("FAILED"), done.stdout + done.stderr
    assert stat.S_IMODE(home.stat().st_mode) & 0o077 == 0  # nobody else can enter the folder
    kept = list(home.rglob("*"))
    assert not [p for p in kept if p.is_file() and b"is after end" in p.read_bytes()]  # no persisted exception
    inside = home.resolve()
    for path in kept:  # and nothing under it leads out of it (a symlink elsewhere)
        assert path.resolve().is_relative_to(inside), path


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


def test_generate_keys_artifact_holds_both_public_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("IBREPORTS_KEY_PASSPHRASE", "artifact key passphrase 9")
    keys = tmp_path / "keys"
    state = generate_keys(dir=str(keys), rsa_bits=2048, pgp_bits=2048, return_state=True)
    assert state.is_completed(), state.message
    (artifact,) = artifacts(flow_run_id(state), "ibreports-keys")
    # An operator away from the worker host can send both to IBKR from the UI.
    assert (keys / "ibkr_sftp_rsa.pub").read_text().strip() in artifact.data
    assert (keys / "ibkr_pgp_public.asc").read_text().strip() in artifact.data
    assert "PRIVATE KEY" not in artifact.data and "artifact key passphrase 9" not in artifact.data


def test_backup_keys_defaults_to_the_folder_of_the_configs_key_files(tmp_path, monkeypatch, server, sftp_client_key,
                                                                    pgp_key):
    monkeypatch.setenv("IBREPORTS_KEY_PASSPHRASE", "default folder passphrase 3")
    monkeypatch.setenv("IBREPORTS_BACKUP_PASSPHRASE", "default folder backup 4")
    monkeypatch.chdir(tmp_path)  # no keys/ here: the old default would find nothing
    keys = tmp_path / "elsewhere" / "ibkr-keys"
    made = generate_keys(dir=str(keys), rsa_bits=2048, pgp_bits=2048)
    cfg = make_config(tmp_path / "conf", server, (keys / "ibkr_sftp_rsa", None, "x"), pgp_key)
    cfg.write_text(cfg.read_text().replace(str(pgp_key.secret_file), str(keys / "ibkr_pgp_secret.asc")))
    monkeypatch.setenv("IBREPORTS_CONFIG", str(cfg))
    monkeypatch.setenv("IBREPORTS_KEY_BACKUP_URL", str(tmp_path / "backups" / "keys.bundle"))
    state = backup_keys(return_state=True)  # as the weekly schedule runs it: no parameters
    assert state.is_completed(), state.message
    assert state.result()["fingerprints"][""] == {"ssh": made["ssh_fingerprint"], "pgp": made["pgp_fingerprint"]}
    assert any(str(keys) in m and "folder of the config's key files" in m
               for m in eventually(lambda: run_logs(flow_run_id(state), "backup written"), timeout=30, step=0.3))

    # Key files in unrelated folders cannot be one backup: the run says to pass dir.
    cfg.write_text(cfg.read_text().replace(str(keys / "ibkr_pgp_secret.asc"), str(pgp_key.secret_file)))
    state = backup_keys(return_state=True)
    assert state.is_failed() and "separate folders" in state.message and "dir=" in state.message


def test_alerts_artifacts_and_the_run_record_lead_to_the_flow_run(tmp_path, server, sftp_client_key, pgp_key):
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    (server.root / "outgoing" / "U1234567.DailyActivity.20261106.20261106.xml.pgp").write_bytes(b"not pgp at all")
    receiver = Receiver()
    with temporary_settings({PREFECT_UI_URL: "http://prefect.example:4200"}):
        state = retrieve_with_alerts(make_config(tmp_path / "conf", server, sftp_client_key, pgp_key), receiver)
    run_id = flow_run_id(state)
    link = f"http://prefect.example:4200/runs/flow-run/{run_id}"
    assert state.is_failed() and receiver.messages
    assert all(link in m["message"] for m in receiver.messages), receiver.messages
    (summary,) = artifacts(run_id, SUMMARY_ARTIFACT_KEY)
    assert link in summary.data
    (record,) = (tmp_path / "conf" / "archive" / "runs").rglob("*.json")
    origin = json.loads(record.read_text())["origin"]
    assert origin["prefect_flow_run_id"] == str(run_id) and origin["prefect_flow_run_url"] == link
