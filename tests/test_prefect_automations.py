"""Unattended operation: a real `prefect server start`, `prefect deploy --all`, the automations of
automations.yaml created the way `make deploy` creates them, and a real process worker.

kill -9 of the worker and its flow-run process mid-run: the run's heartbeats stop, the
automation marks it Crashed (freeing the daily deployment's concurrency slot), one alert
reaches the [alerts] URL (a local HTTP receiver), and the next daily run completes. Many
short runs with the automations live: none is changed once it ended (heartbeats that
arrive late included), each failed or cancelled scheduled run is told once, the library's
per-file lines are in the run's logs, a failed run's logs hold no traceback. The dead-man's
switch tells a person when no daily run completed within its window.

The crash automation's window is 90 s here (``--within``, as `make deploy` users can), with
the shortest heartbeat Prefect allows (30 s, per run as a job variable).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import socket
import threading
import time

import pytest
import yaml

from tests.configs import sftp_toml
from tests.prefect_harness import PYTHON, REPO, PrefectStack
from tests.helpers import Receiver, run_id_of, seed, write_config
from tests.fixtures.sshd import free_port
from tests.waiting import eventually

pytestmark = pytest.mark.slow

CRASH = "ibreports-crash-runs-without-heartbeat"
FAILURES = "ibreports-tell-failed-scheduled-runs"
DEADMAN = "ibreports-no-completed-daily-run"
FAST_HEARTBEAT = {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class SilentServer:
    """Accepts TCP connections and never says a word: a run against it stays busy."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture(scope="module")
def receiver():
    rec = Receiver()
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, receiver):
    """Server up, every deployment of prefect.yaml deployed, the automations created from a config."""
    home = tmp_path_factory.mktemp("prefect-home")
    cfg = home / "alerts.toml"
    cfg.write_text(f'[alerts]\nurls = ["{receiver.url}"]\n')  # a config with only alerts: enough for the automations
    stack = PrefectStack(home, {"IBREPORTS_HOME": str(REPO)})
    try:
        stack.start_server()
        stack.cli("work-pool", "create", "ibreports", "--type", "process")
        stack.cli("deploy", "--all", "--no-prompt")
        stack.automations_output = stack.run(PYTHON, "-m", "flows.automations", "--config", str(cfg),
                                             "--within", f"{CRASH}=90")
        yield stack
    finally:
        stack.stop()


def told(receiver: Receiver, run_id: str) -> list[dict]:
    """The alerts that name one flow run (the failure automation's carry its id)."""
    return [m for m in receiver.messages if run_id in m.get("message", "")]


def automation(stack: PrefectStack, name: str) -> dict:
    (found,) = [a for a in stack.post("/automations/filter", {}) if a["name"] == name]
    return found


def test_make_deploy_creates_both_automations_with_alert_targets(stack, receiver):
    shipped = {a["name"]: a for a in yaml.safe_load((REPO / "automations.yaml").read_text())["automations"]}
    crash = automation(stack, CRASH)
    assert crash["trigger"]["posture"] == "Proactive" and crash["trigger"]["within"] == 90.0  # --within applied
    assert shipped[CRASH]["trigger"]["within"] == 300
    # It only marks the run, never by force (a finished run stays as it ended); the next one tells.
    assert [(a["type"], a["state"], a["force"]) for a in crash["actions"]] == [("change-flow-run-state", "CRASHED", False)]
    failures = automation(stack, FAILURES)
    scheduled = sorted(f"prefect.deployment.{stack.get(f'/deployments/name/{name}')['id']}"
                       for name in ("retrieve-statements/daily", "verify-archive/verify", "backup-keys/backup-keys"))
    assert sorted(failures["trigger"]["match_related"]["prefect.resource.id"]) == scheduled
    assert failures["trigger"]["posture"] == "Reactive"
    assert [a["type"] for a in failures["actions"]] == ["send-notification"]

    deadman = automation(stack, DEADMAN)
    daily = stack.get("/deployments/name/retrieve-statements/daily")
    assert deadman["trigger"]["within"] == 26 * 3600.0
    assert deadman["trigger"]["match_related"]["prefect.resource.id"] == f"prefect.deployment.{daily['id']}"
    assert [a["type"] for a in deadman["actions"]] == ["send-notification"]
    block = stack.get(f"/block_documents/{deadman['actions'][0]['block_document_id']}")
    assert block["name"] == "ibreports-alert-0"
    assert receiver.url not in str(block)  # the URL is kept as a secret, not shown
    # Every deployment's runs send heartbeats.
    assert daily["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "60"

    # Running it again replaces, never duplicates.
    stack.run(PYTHON, "-m", "flows.automations", "--config", str(stack.home / "alerts.toml"),
              "--within", f"{CRASH}=90")
    names = [a["name"] for a in stack.post("/automations/filter", {})]
    assert names.count(CRASH) == names.count(FAILURES) == names.count(DEADMAN) == 1


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.timeout(900)
def test_a_killed_worker_run_is_crashed_alerted_and_the_next_daily_run_completes(
        stack, receiver, tmp_path, sshd_factory, sftp_client_key, pgp_key):
    silent = SilentServer()
    server = sshd_factory([sftp_client_key[1]])
    seed(server.root / "outgoing", pgp_key.public_file)
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    archive = f'[archive]\nurl = "{tmp_path / "archive"}"\n'
    alerts = f'[alerts]\nurls = ["{receiver.url}"]\n'
    stuck = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts, port=silent.port, timeout=600),
                         pgp_key, archive + alerts)
    stack.env.update(IBREPORTS_CONFIG=str(stuck), TEST_PGP_PASSPHRASE=pgp_key.passphrase,
                     TEST_SSH_PASSPHRASE=sftp_client_key[2])
    worker = stack.spawn("worker", "worker", "start", "--pool", "ibreports", "--name", "doomed-worker")
    # The shortest heartbeat Prefect allows (30 s) with the 90 s window given at creation.
    run_id = run_id_of(stack.cli("deployment", "run", "retrieve-statements/daily",
                                 "--job-variable", 'env={"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}'))

    def beating():
        events = stack.post("/events/filter", {"filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{run_id}"]}}})
        return events["events"] and stack.get(f"/flow_runs/{run_id}")["state_type"] == "RUNNING"

    assert eventually(beating, timeout=300, step=2), stack.log("worker")
    doomed = [worker.pid, *_descendants(worker.pid)]
    assert len(doomed) >= 2, "the flow-run process was not found under the worker"
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    worker.wait()

    run = eventually(lambda: (r := stack.get(f"/flow_runs/{run_id}"))["state_type"] != "RUNNING" and r,
                     timeout=600, step=5)
    assert run and run["state_type"] == "CRASHED", run
    assert "No heartbeat" in run["state"]["message"]
    alert = eventually(lambda: told(receiver, run_id), timeout=120, step=1)
    assert alert and "crashed" in alert[0]["title"], receiver.messages
    assert "no heartbeat" in alert[0]["message"] and run["name"] in alert[0]["message"]

    # The slot is free: the next daily run is not cancelled by the concurrency limit, and completes.
    silent.close()
    stack.env["IBREPORTS_CONFIG"] = str(write_config(
        tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive + alerts))
    next_worker = stack.spawn("worker-2", "worker", "start", "--pool", "ibreports", "--name", "next-worker")
    next_id = run_id_of(stack.cli("deployment", "run", "retrieve-statements/daily"))
    nxt = stack.wait_flow_run(next_id, timeout=300)
    assert nxt["state_type"] == "COMPLETED", f"{nxt['state']}\n{stack.log('worker-2')}"
    assert len(told(receiver, run_id)) == 1  # told once, not once per action or per heartbeat
    stack.stop_one(next_worker)  # the next test starts its own


SHORT_RUNS = 32
# Resends heartbeats (read back from the server) as Prefect's client does when one arrives after the
# run ended: the race that made the forced automation rewrite finished runs.
LATE_HEARTBEATS = """
import asyncio, json, sys
from prefect.events import Event
from prefect.events.clients import get_events_client

async def main():
    async with get_events_client() as client:
        for old in json.load(sys.stdin):
            await client.emit(Event(event=old["event"], resource=old["resource"], related=old["related"]))

asyncio.run(main())
"""


def final(stack: PrefectStack, run_ids: list[str]) -> bool:
    return all(stack.get(f"/flow_runs/{r}")["state_type"] in FINAL for r in run_ids)


def refused(stack: PrefectStack) -> dict[str, str]:
    """Flow run id -> reason, for each crash-automation action the server refused."""
    found = {}
    for event in stack.events("prefect.automation.action.failed"):
        targets = [r["prefect.resource.id"] for r in event["related"] if r.get("prefect.resource.role") == "target"]
        for target in targets:
            found[target.removeprefix("prefect.flow-run.")] = event["payload"].get("reason", "")
    return found


@pytest.mark.timeout(900)
def test_many_short_runs_are_never_rewritten_and_each_failure_is_told_once(
        stack, receiver, tmp_path, sshd_factory, sftp_client_key, pgp_key):
    server = sshd_factory([sftp_client_key[1]])
    delivered = seed(server.root / "outgoing", pgp_key.public_file)
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    (tmp_path / "nobody_known").write_text("")
    alerts = f'[alerts]\nurls = ["{receiver.url}"]\n'

    def config(name: str, sources: str) -> str:
        folder = tmp_path / name
        folder.mkdir()
        return str(write_config(folder, sources, pgp_key, f'[archive]\nurl = "{folder / "archive"}"\n' + alerts))

    good = config("good", sftp_toml(server, sftp_client_key, known_hosts))
    quick = config("quick", sftp_toml(server, sftp_client_key, known_hosts))  # verify runs: an archive of their own
    # Two sources that fail as operators see it: a server that is not there, and a host key nobody pinned.
    down = config("down", sftp_toml(server, sftp_client_key, known_hosts, port=free_port())
                  + sftp_toml(server, sftp_client_key, tmp_path / "nobody_known", name="ibkr-refused"))
    stack.env.update(TEST_PGP_PASSPHRASE=pgp_key.passphrase, TEST_SSH_PASSPHRASE=sftp_client_key[2])
    worker = stack.spawn("worker-3", "worker", "start", "--pool", "ibreports", "--name", "fleet", "--limit", "4")
    before = len(receiver.messages)

    # A failing daily run holds the deployment's single slot (its unreachable source is retried)...
    failing = stack.create_run("retrieve-statements/daily", {"config": down}, FAST_HEARTBEAT)["id"]
    assert eventually(lambda: stack.get(f"/flow_runs/{failing}")["state_type"] == "RUNNING", timeout=300, step=1), \
        stack.log("worker-3")
    # ... so the next one is cancelled by the concurrency limit (CANCEL_NEW).
    cancelled = stack.create_run("retrieve-statements/daily", {"config": down}, FAST_HEARTBEAT)["id"]
    backfill = stack.create_run("backfill-statements/backfill",
                                {"config": good, "start": "2026-11-01", "end": "2026-11-30"}, FAST_HEARTBEAT)["id"]
    short = [stack.create_run("verify-archive/verify", {"config": quick}, FAST_HEARTBEAT)["id"] for _ in range(SHORT_RUNS)]
    assert stack.wait_flow_run(backfill, timeout=600)["state_type"] == "COMPLETED", stack.log("worker-3")
    forced = stack.create_run("backfill-statements/backfill",
                              {"config": good, "start": "2026-11-01", "end": "2026-11-30", "force": True},
                              FAST_HEARTBEAT)["id"]
    every = [failing, cancelled, backfill, forced, *short]
    assert eventually(lambda: final(stack, every), timeout=600, step=3), stack.log("worker-3")

    runs = {r: stack.get(f"/flow_runs/{r}") for r in every}
    seen = {r: (runs[r]["name"], runs[r]["state_type"], runs[r]["state"]["message"]) for r in every}
    assert [runs[r]["state_type"] for r in (failing, cancelled, backfill, forced)] == \
        ["FAILED", "CANCELLED", "COMPLETED", "COMPLETED"], seen
    completed = [r for r in short if runs[r]["state_type"] == "COMPLETED"]
    # A short run the loaded machine broke (its process or its API calls) is a real crash, told like any other.
    assert {runs[r]["state_type"] for r in short} <= {"COMPLETED", "CRASHED"}, seen
    assert len(completed) >= 3, seen

    # Heartbeats that reach the server after their run ended: the crash automation fires for them.
    late = completed[:3] + [forced]
    beats = stack.events("prefect.flow-run.heartbeat", [f"prefect.flow-run.{r}" for r in late])
    assert {e["resource"]["prefect.resource.id"] for e in beats} == {f"prefect.flow-run.{r}" for r in late}
    subprocess.run([PYTHON, "-c", LATE_HEARTBEATS], input=json.dumps(beats), text=True, env=stack.env,
                   check=True, timeout=120, capture_output=True)
    # Past the window of the last heartbeat: the automation tried each, and the server refused.
    reasons = eventually(lambda: (found := refused(stack)) and set(late) <= set(found) and found, timeout=300, step=5)
    assert reasons, refused(stack)
    assert all("terminal state COMPLETED" in reasons[r] for r in late), reasons

    # No run changed once it ended: its first final state is its last.
    for run_id in every:
        history = [h["type"] for h in stack.states(run_id)]
        first_final = next(i for i, kind in enumerate(history) if kind in FINAL)
        assert first_final == len(history) - 1, (seen[run_id], history)
        assert stack.get(f"/flow_runs/{run_id}")["state_type"] == runs[run_id]["state_type"], seen[run_id]

    # Each failed, crashed or cancelled scheduled run is told once; finished runs and backfills never.
    bad = [failing, cancelled, *(r for r in short if r not in completed)]
    assert eventually(lambda: all(told(receiver, r) for r in bad), timeout=120, step=1), receiver.messages[before:]
    time.sleep(5)  # a second message would come at once
    assert {r: len(told(receiver, r)) for r in bad} == {r: 1 for r in bad}, receiver.messages[before:]
    assert "failed" in told(receiver, failing)[0]["title"]
    assert "cancelled" in told(receiver, cancelled)[0]["title"]
    assert "concurrency limit" in told(receiver, cancelled)[0]["message"]
    failed_alert = told(receiver, failing)[0]["message"]
    assert "source ibkr-sftp:" in failed_alert and "source ibkr-refused:" in failed_alert  # causes and remedies
    assert len(receiver.messages) - before == len(bad), receiver.messages[before:]

    # The failed run: one clear message, no traceback anywhere in its logs.
    logs = eventually(lambda: (found := stack.flow_run_logs(failing)) and any("RunFailed" in m for m in found) and found,
                      timeout=60, step=2)
    assert sum(m.startswith("RunFailed: ") for m in logs) == 1, logs
    assert not [m for m in logs if "Traceback" in m or "Engine execution exited" in m or "NoneType: None" in m], logs
    assert "could not be retrieved" in runs[failing]["state"]["message"]

    # The library's per-file lines, from its worker threads, are in the backfill's logs.
    archived = eventually(lambda: [m for m in stack.flow_run_logs(backfill) if " archived (" in m], timeout=60, step=2)
    assert sorted(m.split(": ")[1].split(" ")[0] for m in archived) == sorted(delivered), archived
    verified = [m for m in stack.flow_run_logs(forced) if " verified (" in m]
    assert sorted(m.split(": ")[1].split(" ")[0] for m in verified) == sorted(delivered), verified
    # A forced backfill counts what it verified.
    assert runs[forced]["state"]["message"] == f"0 archived, 0 failed, {len(delivered)} verified", runs[forced]["state"]

    # Every run that ran has a readable name of its own: deployment, when it was due, its id.
    started = [failing, backfill, forced, *completed]
    names = [runs[r]["name"] for r in started]
    assert len(set(names)) == len(names), names
    for run_id in started:
        run = runs[run_id]
        label = {failing: "daily", backfill: "backfill-2026-11-01..2026-11-30",
                 forced: "backfill-2026-11-01..2026-11-30-force"}.get(run_id, "verify")
        assert re.fullmatch(rf"{re.escape(label)}-\d{{4}}-\d\d-\d\dT\d\d:\d\dZ-{run_id[:6]}", run["name"]), run["name"]
    stack.stop_one(worker)


@pytest.mark.timeout(600)
def test_the_dead_mans_switch_alerts_when_no_daily_run_completed_in_its_window(stack, receiver):
    before = len(receiver.messages)
    stack.run(PYTHON, "-m", "flows.automations", "--config", str(stack.home / "alerts.toml"),
              "--within", f"{CRASH}=90", "--within", f"{DEADMAN}=20")
    alert = eventually(lambda: [m for m in receiver.messages[before:] if "26 hours" in m.get("title", "")],
                       timeout=300, step=2)
    assert alert, receiver.messages
    assert "prefect deployment run retrieve-statements/daily" in alert[0]["message"]
