"""What every flow run does the same way: its name, its logs, how it fails, who tells a person.

- **Names.** ``run_name`` is the flow's ``flow_run_name``: deployment (or what the run is),
  its sources or dates, when it was due (UTC) and the first characters of its id, e.g.
  ``daily-2026-12-02T11:30Z-3f2a1b``: readable, and never shared by two runs.
- **Logs.** The library's log lines (``ibreports.*``, from whichever thread: the library
  runs each job in a copy of the submitter's context) go to the run's logs in the UI, and
  one line per file (``ibreports.files``) while a flow runs.
- **Failures.** An expected failure (an ``IbreportsError``: server unreachable, key refused,
  bad config) ends the run Failed with one message and its remedy, and no traceback in the
  run's logs; a bug keeps its traceback.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import FailedRun
from prefect.logging.handlers import APILogHandler
from prefect.states import Failed, State

from ibreports.errors import IbreportsError

# automations.yaml: tells a person of each Failed, Crashed or Cancelled run of the scheduled deployments.
FAILURE_AUTOMATION = "ibreports-tell-failed-scheduled-runs"
LIBRARY_LOGGER = "ibreports"
FILES_LOGGER = "ibreports.files"  # one line per file: on while a flow runs, off for the CLI


def run_name(kind: str) -> str:
    """The flow run's name, e.g. ``daily-2026-12-02T11:30Z-3f2a1b``, ``backfill-2026-08-01..2026-08-31-...``."""
    from prefect.runtime import deployment, flow_run

    params = flow_run.parameters or {}
    start = flow_run.scheduled_start_time
    due = (start.astimezone(timezone.utc) if start is not None else datetime.now(timezone.utc))
    parts = [str(deployment.name or "") or {"retrieve": "daily" if not params.get("sources") else "fetch"}.get(kind, kind)]
    if params.get("sources"):
        parts.append("+".join(params["sources"]))
    if kind == "backfill":
        parts.append(f"{params.get('start')}..{params.get('end')}" + ("-force" if params.get("force") else ""))
    elif params.get("since") or params.get("until"):
        parts.append(f"{params.get('since') or 'start'}..{params.get('until') or due.date().isoformat()}")
    parts.append(due.strftime("%Y-%m-%dT%H:%MZ"))
    if flow_run.id:
        parts.append(str(flow_run.id)[:6])
    return "-".join(parts)


class RunLogHandler(APILogHandler):
    """Prefect's API log handler for records made inside a flow or task run; others are dropped quietly."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "flow_run_id", None) or FlowRunContext.get() or TaskRunContext.get():
            super().emit(record)


class QuietExpectedFailures(logging.Filter):
    """No traceback for an expected failure in Prefect's run logs: the message already says what and why.

    Prefect logs one with every failure: at the end of a task's retries (even for a returned
    Failed state, as ``NoneType: None``) and, when a flow returns a Failed state, once more as
    "Engine execution exited with unexpected exception" (dropped: the reason was logged once).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True
        exc = record.exc_info[1]
        if exc is not None and not isinstance(exc, (IbreportsError, FailedRun)):
            return True  # a bug: keep its traceback
        if record.getMessage().startswith("Engine execution exited"):
            return False
        record.exc_info, record.exc_text = None, None
        return True


def _install() -> None:
    library = logging.getLogger(LIBRARY_LOGGER)
    if not any(isinstance(h, APILogHandler) for h in library.handlers):  # PREFECT_LOGGING_EXTRA_LOGGERS adds one too
        library.addHandler(RunLogHandler())
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietExpectedFailures) for f in logger.filters):
            logger.addFilter(QuietExpectedFailures())


_install()
_levels_lock = threading.Lock()
_active = 0
_saved: dict[str, int] = {}


@contextmanager
def library_logs() -> Iterator[None]:
    """While a flow runs: the library's INFO lines and one line per file reach the run's logs."""
    global _active
    with _levels_lock:
        if _active == 0:
            for name in (LIBRARY_LOGGER, FILES_LOGGER):
                logger = logging.getLogger(name)
                _saved[name] = logger.level
                if logger.level == logging.NOTSET or logger.level > logging.INFO:
                    logger.setLevel(logging.INFO)
        _active += 1
    try:
        yield
    finally:
        with _levels_lock:
            _active -= 1
            if _active == 0:
                for name, level in _saved.items():
                    logging.getLogger(name).setLevel(level)


def run_failed(message: str) -> State:
    """The Failed final state of a run, its reason logged once (RunFailed: ...), no traceback."""
    get_run_logger().error("RunFailed: %s", message)
    return Failed(message=f"RunFailed: {message}")


def guarded(body: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A flow's body with the library's logs in the run; an IbreportsError ends it Failed with its message and remedy."""
    with library_logs():
        try:
            return body(*args, **kwargs)
        except IbreportsError as exc:
            return run_failed(str(exc))


def server_tells_failures() -> bool:
    """True when the Prefect server tells a person of this run's failure (automation FAILURE_AUTOMATION
    watches its deployment), so the run does not send its own failure alert as well."""
    from prefect.runtime import deployment

    if not deployment.id:
        return False
    try:
        with get_client(sync_client=True) as client:
            found = client.read_automations_by_name(FAILURE_AUTOMATION)
    except Exception:  # noqa: BLE001 - cannot tell: alert from the run (a duplicate beats silence)
        return False
    watched = f"prefect.deployment.{deployment.id}"
    return any(a.enabled and watched in a.trigger.model_dump_json() and a.actions for a in found)
