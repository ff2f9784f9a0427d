"""Unattended operation: a real `prefect server start`, `prefect deploy --all`, the automations of
automations.yaml created the way `make deploy` creates them, and a real process worker.

kill -9 of the worker and its flow-run process mid-run: the run's heartbeats stop, the
automation marks it Crashed (freeing the daily deployment's concurrency slot), an alert
reaches the [alerts] URL (a local HTTP receiver), and the next daily run completes. The
dead-man's switch tells a person when no daily run completed within its window.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
import yaml

from tests.configs import sftp_toml
from tests.prefect_harness import PYTHON, REPO, PrefectStack
from tests.helpers import Receiver, run_id_of, seed, write_config
from tests.waiting import eventually

pytestmark = pytest.mark.slow

CRASH = "ibreports-crash-runs-without-heartbeat"
DEADMAN = "ibreports-no-completed-daily-run"


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


def automation(stack: PrefectStack, name: str) -> dict:
    (found,) = [a for a in stack.post("/automations/filter", {}) if a["name"] == name]
    return found


def test_make_deploy_creates_both_automations_with_alert_targets(stack, receiver):
    shipped = {a["name"]: a for a in yaml.safe_load((REPO / "automations.yaml").read_text())["automations"]}
    crash = automation(stack, CRASH)
    assert crash["trigger"]["posture"] == "Proactive" and crash["trigger"]["within"] == 90.0  # --within applied
    assert shipped[CRASH]["trigger"]["within"] == 300
    kinds = [a["type"] for a in crash["actions"]]
    assert kinds == ["change-flow-run-state", "send-notification"]
    assert crash["actions"][0]["state"] == "CRASHED" and crash["actions"][0]["force"] is True

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
    assert names.count(CRASH) == names.count(DEADMAN) == 1


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
    alert = eventually(lambda: [m for m in receiver.messages if run["name"] in m.get("message", "")],
                       timeout=120, step=1)
    assert alert and "crashed" in alert[0]["title"], receiver.messages
    assert "no heartbeat" in alert[0]["message"]

    # The slot is free: the next daily run is not cancelled by the concurrency limit, and completes.
    silent.close()
    stack.env["IBREPORTS_CONFIG"] = str(write_config(
        tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive + alerts))
    stack.spawn("worker-2", "worker", "start", "--pool", "ibreports", "--name", "next-worker")
    next_id = run_id_of(stack.cli("deployment", "run", "retrieve-statements/daily"))
    nxt = stack.wait_flow_run(next_id, timeout=300)
    assert nxt["state_type"] == "COMPLETED", f"{nxt['state']}\n{stack.log('worker-2')}"


@pytest.mark.timeout(600)
def test_the_dead_mans_switch_alerts_when_no_daily_run_completed_in_its_window(stack, receiver):
    before = len(receiver.messages)
    stack.run(PYTHON, "-m", "flows.automations", "--config", str(stack.home / "alerts.toml"),
              "--within", f"{CRASH}=90", "--within", f"{DEADMAN}=20")
    alert = eventually(lambda: [m for m in receiver.messages[before:] if "26 hours" in m.get("title", "")],
                       timeout=300, step=2)
    assert alert, receiver.messages
    assert "prefect deployment run retrieve-statements/daily" in alert[0]["message"]
