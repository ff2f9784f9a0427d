"""`ibreports demo`: the real pipeline through the real flow, against the sandbox, in tmp_path."""

from __future__ import annotations

import io
import logging
import os
import stat
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree

import pytest

from flows.demo import run_flow
from flows.local_api import DEFAULT_TIMEOUT, TIMEOUT_SETTING, startup_timeout
from ibreports import statements
from ibreports.cli import main
from ibreports.errors import ConfigError
from ibreports.demo import MARKER, PASSPHRASE_ENV, SOURCE, deliveries, run_demo
from ibreports.pgp import is_openpgp


@pytest.fixture(scope="module")
def prefect_api():
    """The flow runs as `ibreports demo` runs it (ephemeral API); stop that server with this module.

    Stopped here rather than at interpreter exit, when pytest's captured streams are closed.
    """
    yield
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    APILogWorker.drain_all()
    EventsWorker.drain_all()
    SubprocessASGIServer().stop()


@pytest.fixture(autouse=True)
def keep_env(monkeypatch):
    """run_flow points Prefect at the demo folder; give the process its settings back afterwards."""
    for name in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED"):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)


class Console(logging.Handler):
    """Stands beside the CLI's console handler on the root logger: records what the user would see."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


def test_demo_archives_and_decrypts_every_seeded_statement(tmp_path, capfd, prefect_api):
    folder = tmp_path / "demo"
    console = Console()
    now = datetime.now(timezone.utc)
    seen: list[str] = []

    def flow(config):
        seen.append(os.environ[PASSPHRASE_ENV])  # the run sees the passphrase only through the env
        import flows.retrieve  # noqa: F401 - Prefect sets up logging on import; then the CLI's set-up applies

        root, level = logging.getLogger(), logging.getLogger().level
        root.addHandler(console)
        root.setLevel(logging.INFO)  # as the CLI's logging.basicConfig leaves it
        try:
            run_flow(folder, config)
        finally:
            root.removeHandler(console)
            root.setLevel(level)

    assert run_demo(folder, flow, out=(buf := io.StringIO()), now=now) == 0
    printed = buf.getvalue()
    out, err = capfd.readouterr()
    assert PASSPHRASE_ENV not in os.environ and len(seen) == 1

    items = deliveries(now)
    accounts = {statements.parse(d.name, d.mtime).account for d in items}
    assert {"U1234567", "U7654321", "F1234567", "DU1234567"} <= accounts
    assert any(d.name.endswith(".zip.pgp") for d in items) and any(not d.encrypted for d in items)
    archive = folder / "archive"
    for item in items:
        st = statements.parse(item.name, item.mtime)
        plain = archive / statements.statement_key(st)
        assert plain.read_bytes() == item.plaintext, item.name
        assert stat.S_IMODE(plain.stat().st_mode) == 0o400
        original = archive / statements.original_key(SOURCE, st)
        if item.encrypted:
            assert is_openpgp(original) and original.read_bytes() != item.plaintext
        else:
            assert not original.exists()
        if item.name.endswith(".zip.pgp"):
            with zipfile.ZipFile(io.BytesIO(plain.read_bytes())) as zf:
                assert sorted(zf.namelist()) == ["CashReport.csv", "Trades.csv"]
                assert zf.read("Trades.csv").startswith(b"ClientAccountID,Symbol")
        elif ".xml" in item.name:
            root = ElementTree.fromstring(plain.read_bytes())
            assert root.tag == "FlexQueryResponse" and root.get("type") in ("AF", "TCF")
            assert root.find("FlexStatements/FlexStatement").get("accountId") == st.account

    # The seeded file close to the purge was flagged before the run, and archived by it.
    old = min(items, key=lambda d: d.mtime)
    flagged = [line for line in printed.splitlines() if line.startswith("!") and old.name in line]
    assert len(flagged) == 1
    assert f"{len(items)} file(s) on the server, {len(items)} archived, 0 at risk" in printed
    assert "ibreports keygen" in printed and "trust-host" in printed and "doctor" in printed
    assert "statements/" in printed and "encrypted/" in printed and "bytes, mode 0400)" in printed
    assert "[alerts] urls" in printed.split("For real use:")[1]
    assert "8. make deploy " in printed and "prefect deploy" not in printed  # the deployments and the automations

    # Clean output: ibreports' run summary once, no Prefect chatter, the temporary server already stopped
    # (so its "Stopping temporary server" cannot come after the next steps).
    assert [line.endswith(f": {len(items)} archived, 0 already archived") for line in console.lines].count(True) == 1
    assert not [line for line in console.lines if line.startswith("prefect")], console.lines
    for noise in ("temporary server", "Concurrency limits", "Finished in state", "Beginning flow run"):
        assert noise not in out + err + printed
    # The local API was started before the flow, with progress shown, and waited for as long as it needed.
    assert "Starting a local Prefect API (first start: creating its database" in out
    assert "Prefect API ready after" in out
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer._instances.get(None)
    assert server is None or not server.running

    # Host key pinned, the passphrase kept nowhere: not in output, not on disk.
    known = (folder / "keys" / "known_hosts").read_text()
    assert known.startswith("[127.0.0.1]:") and "ecdsa-sha2-nistp256" in known
    config = (folder / "ibreports.toml").read_text()
    assert f"env:{PASSPHRASE_ENV}" in config and "settle_seconds = 0" in config
    secret = seen[0].encode()
    assert seen[0] not in printed + out + err
    for path in folder.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path
    assert (folder / MARKER).exists()


def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--dir", str(tmp_path)], flow_runner=run_flow) == 2
    assert "not made by `ibreports demo`" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["precious.txt"]


def test_a_local_prefect_api_that_does_not_start_in_time_names_the_setting(tmp_path):
    """A cold start slower than the allowed wait: one error naming the cause and the setting, exit 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    ibreports = Path(sys.executable).with_name("ibreports")
    done = subprocess.run([str(ibreports), "demo", "--dir", str(tmp_path / "demo")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Starting a local Prefect API (first start: creating its database" in done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "did not answer within 1 s" in errors[0], done.stderr
    assert "remedy: Set PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS to more seconds" in done.stderr
    for wrong in ("nothing was deleted", "traceback", "Traceback"):
        assert wrong not in done.stdout + done.stderr


def test_the_local_prefect_api_waits_minutes_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv(TIMEOUT_SETTING, raising=False)
    assert startup_timeout() == DEFAULT_TIMEOUT >= 600  # Prefect's own default is 20 s
    monkeypatch.setenv(TIMEOUT_SETTING, "45")
    assert startup_timeout() == 45
    monkeypatch.setenv(TIMEOUT_SETTING, "soon")
    with pytest.raises(ConfigError, match=TIMEOUT_SETTING):
        startup_timeout()
