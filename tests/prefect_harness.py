"""A real Prefect server, CLI and worker as subprocesses, for the deployment test.

Every child runs in its own process group so teardown can stop it with its
children (the worker's flow-run processes, the server's uvicorn), and every
child shares one throwaway PREFECT_HOME: nothing touches the user's profile.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
PYTHON = sys.executable
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PortTaken(Exception):
    """The probed port was taken by someone else before the server bound it."""


class PrefectStack:
    """``prefect server start`` plus helpers to run the CLI and a worker against it."""

    def __init__(self, home: Path, extra_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.logs = home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_ENABLED="false",
            PREFECT_API_URL=self.api,
            PREFECT_WORKER_QUERY_SECONDS="1",
            PREFECT_WORKER_HEARTBEAT_SECONDS="5",
            PREFECT_CLI_COLORS="false",
            PREFECT_CLI_WRAP_LINES="false",
            PYTHONUNBUFFERED="1",
            COLUMNS="200",
        )
        env.update(extra_env or {})
        self.env = env
        self.procs: list[subprocess.Popen] = []

    # -- processes ----------------------------------------------------------------------

    def spawn(self, name: str, *args: str, cwd: Path = REPO, program: list[str] | None = None) -> subprocess.Popen:
        """Start a long-running child in its own process group, output to logs/<name>.log.

        ``program`` replaces the ``prefect`` command (e.g. another Python's ``-m prefect``)."""
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [*(program or [PREFECT]), *args], cwd=cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def start_server(self, timeout: float = 900) -> None:
        """Start the server and wait until healthy; a port taken since it was probed is retried on another.

        Its first start creates and migrates the database: minutes on a loaded machine.
        """
        for _ in range(3):
            try:
                return self._start_server(timeout)
            except PortTaken:
                self.port = free_port()
                self.api = self.env["PREFECT_API_URL"] = f"http://127.0.0.1:{self.port}/api"
        raise RuntimeError(f"prefect server found no free port:\n{self.log('server')}")

    def _start_server(self, timeout: float) -> None:
        env = dict(self.env)
        env.pop("PREFECT_API_URL")  # the server itself must not point at itself as a client
        log = open(self.logs / "server.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--no-ui"],
            cwd=self.home, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                if "already in use" in self.log("server"):  # "Port N is already in use" or uvicorn's EADDRINUSE
                    raise PortTaken(self.port)
                raise RuntimeError(f"prefect server exited early:\n{self.log('server')}")
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"prefect server not healthy after {timeout} s:\n{self.log('server')}")

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        """Run one prefect CLI command from the repository root; returns its output."""
        done = subprocess.run(
            [PREFECT, *args], cwd=REPO, env=self.env, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )
        output = done.stdout + done.stderr
        if check and done.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} exited {done.returncode}:\n{output}")
        return output

    def run(self, *command: str, timeout: float = 180) -> str:
        """Run any command (e.g. ``PYTHON, "-m", "flows.automations"``) from the repository root, as the CLI."""
        done = subprocess.run(list(command), cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n{output}")
        return output

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def stop_one(self, proc: subprocess.Popen) -> None:
        """Stop one child (e.g. a worker) and its process group now."""
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        self.procs.remove(proc)

    def stop(self) -> None:
        """SIGTERM each process group, then SIGKILL whatever is left."""
        for proc in self.procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # also reaps grandchildren left in the group
            proc.wait()
        self.procs.clear()

    # -- API ----------------------------------------------------------------------------

    def get(self, path: str) -> dict:
        return self._call("GET", path)

    def post(self, path: str, body: dict) -> list | dict:
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: dict | None = None) -> list | dict:
        """One API call; a busy server's 503 (its SQLite database locked) is tried again, as Prefect's client does."""
        for attempt in range(8):
            # a loaded 2-core machine: SQLite answers slowly
            resp = httpx.request(method, f"{self.api}{path}", json=body, timeout=30)
            if resp.status_code not in (429, 503) or attempt == 7:
                break
            time.sleep(1 + attempt)
        resp.raise_for_status()
        return resp.json()

    def create_run(self, deployment: str, parameters: dict | None = None, job_variables: dict | None = None) -> dict:
        """A flow run of ``FLOW/NAME`` through the API (what `prefect deployment run` does, without its start-up)."""
        dep = self.get(f"/deployments/name/{deployment}")
        return self.post(f"/deployments/{dep['id']}/create_flow_run",
                         {"parameters": parameters or {}, "job_variables": job_variables or {}})

    def states(self, run_id: str) -> list[dict]:
        """Every state the flow run went through, oldest first."""
        return sorted(self.get(f"/flow_run_states/?flow_run_id={run_id}"), key=lambda s: s["timestamp"])

    def flow_run_logs(self, run_id: str) -> list[str]:
        """The flow run's log messages, its task runs' included."""
        found = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200, "sort": "TIMESTAMP_ASC"})
        return [log["message"] for log in found]

    def events(self, name: str, resources: list[str] | None = None) -> list[dict]:
        """Every event of one name (of these resources only, when given), page after page (50 each)."""
        query: dict = {"event": {"name": [name]}}
        if resources:
            query["resource"] = {"id": resources}
        page = self.post("/events/filter", {"filter": query})
        found = list(page["events"])
        while page.get("next_page"):
            resp = httpx.get(page["next_page"], timeout=30)
            resp.raise_for_status()
            page = resp.json()
            found += page["events"]
        return found

    def wait_flow_run(self, run_id: str, timeout: float = 180) -> dict:
        """Poll until the flow run reaches a terminal state; returns the flow run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(f"/flow_runs/{run_id}")
            if run["state_type"] in TERMINAL:
                return run
            time.sleep(0.5)
        raise AssertionError(
            f"flow run {run_id} not finished after {timeout} s (state {run['state_type']}):\n"
            f"{self.log('worker')}"
        )


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
