"""The real thing: `prefect server start`, `prefect deploy --all` with the repository's
prefect.yaml, a process worker, and `prefect deployment run` of the backfill (exactly as
INTERFACE.md shows it) and of the daily deployment fanned out over two sources, against
a real sshd, archiving into a local folder.
"""

from __future__ import annotations

import stat
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from tests.fixtures.pgpkeys import encrypt_bytes
from tests.prefect_harness import REPO, PrefectStack
from tests.configs import sftp_toml
from tests.helpers import PLAIN, archived_files, run_id_of, seed, write_config
from tests.waiting import eventually


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Server up, work pool created, every deployment of prefect.yaml deployed."""
    stack = PrefectStack(tmp_path_factory.mktemp("prefect-home"), {"IBREPORTS_HOME": str(REPO)})
    stack.home.chmod(0o755)  # as ~/.prefect is made under a common umask (022)
    try:
        stack.start_server()
        stack.cli("work-pool", "create", "ibreports", "--type", "process")
        stack.deploy_output = stack.cli("deploy", "--all", "--no-prompt")
        yield stack
    finally:
        stack.stop()


LATE = ("U5555555.DailyActivity.20261110.20261110.xml", b"<FlexQueryResponse>late</FlexQueryResponse>\n")


@pytest.mark.timeout(600)  # includes the module's server start and deploy
def test_backfill_and_fan_out_run_on_a_process_worker(stack, tmp_path, sshd_factory, sftp_client_key, pgp_key):
    server = sshd_factory([sftp_client_key[1]])
    delivered = seed(server.root / "outgoing", pgp_key.public_file)
    (server.root / "second").mkdir()
    encrypt_bytes(pgp_key.public_file, LATE[1], server.root / "second" / (LATE[0] + ".pgp"))
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    sources = sftp_toml(server, sftp_client_key, known_hosts) + sftp_toml(
        server, sftp_client_key, known_hosts, name="ibkr-second", remote_dir=str(server.root / "second"))
    cfg = write_config(tmp_path, sources, pgp_key, f'[archive]\nurl = "{tmp_path / "archive"}"\n')
    # The config and the secrets reach the flow runs the way they would in production: the worker's environment.
    stack.env.update(IBREPORTS_CONFIG=str(cfg), TEST_PGP_PASSPHRASE=pgp_key.passphrase,
                     TEST_SSH_PASSPHRASE=sftp_client_key[2])
    # The worker runs elsewhere: only the deployment's pull step can lead it to flows/.
    elsewhere = tmp_path / "worker-cwd"
    elsewhere.mkdir()
    stack.spawn("worker", "worker", "start", "--pool", "ibreports", "--name", "test-worker", cwd=elsewhere)

    # Exactly the command of INTERFACE.md: no config parameter.
    out = stack.cli("deployment", "run", "backfill-statements/backfill",
                    "--param", "start=2026-11-01", "--param", "end=2026-11-04")
    run_id = run_id_of(out)
    run = stack.wait_flow_run(run_id, timeout=180)

    assert run["state_type"] == "COMPLETED", f"{run['state']}\n{stack.log('worker')}"
    assert run["parameters"] == {"start": "2026-11-01", "end": "2026-11-04"}
    files = archived_files(tmp_path / "archive")
    assert len(files) == len(PLAIN) * 2 + 1 == len(delivered) + len(PLAIN)
    for name, data in PLAIN.items():
        day = name.split(".")[3]
        assert files[f"statements/{name.split('.')[0]}/{day[:4]}/{day[4:6]}/{name}"] == data
    assert not any(LATE[0] in key for key in files)  # dated after the range
    artifacts = stack.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    assert {a["key"] for a in artifacts} >= {"ibreports-run", "ibreports-summary"}

    # The daily deployment fanned out: one per-source child run each, waited for by the parent.
    parent_id = run_id_of(stack.cli("deployment", "run", "retrieve-statements/daily", "--param", "fan_out=true"))
    parent = stack.wait_flow_run(parent_id, timeout=240)
    assert parent["state_type"] == "COMPLETED", f"{parent['state']}\n{stack.log('worker')}"
    per_source = stack.get("/deployments/name/retrieve-statements/per-source")
    children = stack.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [per_source["id"]]}}})
    assert sorted((c["parameters"]["sources"], c["state_type"]) for c in children) == [
        (["ibkr-second"], "COMPLETED"), (["ibkr-sftp"], "COMPLETED"),
    ]
    (summary,) = stack.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [parent_id]},
                                                                "key": {"any_": ["ibreports-summary"]}}})
    assert summary["data"].count("**Completed**") == 2
    assert archived_files(tmp_path / "archive")[f"statements/U5555555/2026/11/{LATE[0]}"] == LATE[1]


def test_daily_deployment_has_its_cron_schedule_and_time_zone(stack):
    daily = stack.get("/deployments/name/retrieve-statements/daily")
    (schedule,) = daily["schedules"]
    assert schedule["schedule"]["cron"] == "30 6 * * *"
    assert schedule["schedule"]["timezone"] == "America/New_York"
    assert schedule["active"] is True
    assert daily["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert daily["global_concurrency_limit"]["limit"] == 1
    assert daily["entrypoint"] == "flows/retrieve.py:retrieve_statements"
    assert daily["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ]


def test_every_deployment_of_the_interface_exists(stack):
    for flow, name in [
        ("backfill-statements", "backfill"), ("generate-keys", "generate-keys"),
        ("backup-keys", "backup-keys"), ("retrieve-statements", "per-source"), ("verify-archive", "verify"),
    ]:
        deployment = stack.get(f"/deployments/name/{flow}/{name}")
        assert deployment["work_pool_name"] == "ibreports"
    assert stack.get("/deployments/name/backfill-statements/backfill")["schedules"] == []
    backup = stack.get("/deployments/name/backup-keys/backup-keys")["schedules"][0]["schedule"]
    assert (backup["cron"], backup["timezone"]) == ("0 7 * * 0", "America/New_York")
    verify = stack.get("/deployments/name/verify-archive/verify")["schedules"][0]["schedule"]
    assert (verify["cron"], verify["timezone"]) == ("0 8 1 * *", "America/New_York")
    schema = stack.get("/deployments/name/backfill-statements/backfill")["parameter_openapi_schema"]
    assert {"start", "end", "sources", "force"} <= set(schema["properties"])
    assert set(schema["required"]) == {"start", "end"}
    # Every parameter of every deployment is described in the UI.
    for flow, name in [("backfill-statements", "backfill"), ("retrieve-statements", "daily"),
                       ("generate-keys", "generate-keys"), ("backup-keys", "backup-keys"),
                       ("verify-archive", "verify")]:
        props = stack.get(f"/deployments/name/{flow}/{name}")["parameter_openapi_schema"]["properties"]
        assert all(p.get("description") for p in props.values()), (flow, props)
    assert "inclusive" in schema["properties"]["start"]["description"]


def test_the_scheduler_creates_the_daily_runs_at_0630_new_york(stack):
    # Guards the server's scheduler itself: with SQLAlchemy 2.1 Prefect 3.8.8 cannot
    # insert scheduled runs ("Can't evaluate bulk DML statement"), so no run would ever start.
    daily = stack.get("/deployments/name/retrieve-statements/daily")
    def scheduled() -> list[dict]:  # runs started by hand (the fan-out test) are not the scheduler's
        runs = stack.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [daily["id"]]}}})
        return [r for r in runs if r["auto_scheduled"]]

    runs = eventually(scheduled, timeout=30, step=1)
    assert runs, f"no scheduled run was created:\n{stack.log('server')}"
    soon = datetime.now(timezone.utc) + timedelta(minutes=10)
    future = []
    for run in runs:
        start = datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00"))
        local = start.astimezone(ZoneInfo("America/New_York"))
        assert (local.hour, local.minute) == (6, 30)
        if start > soon:  # a run due while this module runs may already be with the test worker
            future.append(run["state_type"])
    assert future and set(future) == {"SCHEDULED"}, future


def test_flow_runs_leave_nothing_readable_by_others_under_prefect_home(stack, tmp_path):
    # A run that fails (no key passphrase anywhere) has its state and exception kept under
    # PREFECT_HOME; the flow-run process made the folder private first.
    stack.env.pop("IBREPORTS_KEY_PASSPHRASE", None)
    stack.spawn("worker-private", "worker", "start", "--pool", "ibreports", "--name", "private-worker")
    run_id = run_id_of(stack.cli("deployment", "run", "generate-keys/generate-keys",
                                 "--param", f"dir={tmp_path / 'keys'}"))
    run = stack.wait_flow_run(run_id, timeout=240)
    assert run["state_type"] == "FAILED" and "No key passphrase" in run["state"]["message"]
    assert stat.S_IMODE(stack.home.stat().st_mode) == 0o700
