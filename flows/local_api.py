"""Prefect's temporary local API, started before a flow runs in-process (`ibreports demo`).

Without ``PREFECT_API_URL`` Prefect starts a temporary API server on the first API call
and gives it PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (20 s by default) to
answer. Its first start in a fresh PREFECT_HOME creates and migrates the database,
which takes longer than that on a slow or busy machine. So the server is started here
first, with progress shown and a generous wait; the flow then finds it running.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

from ibreports.errors import ConfigError

TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT = 900  # seconds: a first start on a loaded 2-core machine takes about a minute
TICK = 15  # seconds between "still starting" lines


class LocalApiError(ConfigError):
    """Prefect's temporary API server did not start (exit 2: a setting to change)."""


def startup_timeout() -> int:
    """How long to wait for the server: the user's setting when given, else DEFAULT_TIMEOUT."""
    raw = os.environ.get(TIMEOUT_SETTING, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = int(float(raw))
    except ValueError:
        raise ConfigError(f"{TIMEOUT_SETTING}={raw!r} is not a number of seconds.",
                          f"Set {TIMEOUT_SETTING} to a whole number of seconds, e.g. {DEFAULT_TIMEOUT}.") from None
    return max(value, 1)


def start_local_api(out: TextIO | None = None) -> None:
    """Start Prefect's temporary API server unless one is running; progress lines go to ``out`` (stdout)."""
    out = out or sys.stdout
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_HOME

    server = SubprocessASGIServer()
    if server.running:
        return
    timeout = startup_timeout()
    database = PREFECT_HOME.value() / "prefect.db"
    first = "first start: creating its database, " if not database.exists() else ""
    print(f"   Starting a local Prefect API ({first}up to {timeout} s; set by {TIMEOUT_SETTING}) ...",
          file=out, flush=True)
    started = time.monotonic()
    done = threading.Event()

    def tick() -> None:
        while not done.wait(TICK):
            print(f"   ... still starting ({time.monotonic() - started:.0f} s)", file=out, flush=True)

    ticker = threading.Thread(target=tick, name="local-api-progress", daemon=True)
    ticker.start()
    try:
        server.start(timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - Prefect raises RuntimeError (time-out) or httpx errors
        code = server.server_process.poll() if server.server_process else None
        server.stop()
        raise _start_error(exc, code, timeout, time.monotonic() - started) from None
    finally:
        done.set()
        ticker.join()
    print(f"   Prefect API ready after {time.monotonic() - started:.0f} s.", file=out, flush=True)


def _start_error(exc: Exception, code: int | None, timeout: int, waited: float) -> LocalApiError:
    elsewhere = "or point PREFECT_API_URL at a running `prefect server start`"
    if code is not None:
        return LocalApiError(
            f"Prefect's local API server exited with code {code} before answering (its own output is above).",
            f"Fix the cause it printed (often a PREFECT_HOME it cannot write), {elsewhere}.",
        )
    if "Timed out" in str(exc):
        return LocalApiError(
            f"Prefect's local API server did not answer within {timeout} s (waited {waited:.0f} s; its first start "
            "creates and migrates a database under PREFECT_HOME, slow on a busy machine).",
            f"Set {TIMEOUT_SETTING} to more seconds (e.g. {max(timeout * 2, DEFAULT_TIMEOUT)}), {elsewhere}.",
        )
    return LocalApiError(
        f"Prefect's local API server failed its health check ({type(exc).__name__}: {exc}).",
        f"Run again; if it repeats, {elsewhere}.",
    )
