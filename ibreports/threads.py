"""A thread pool whose jobs run in a copy of the submitting thread's context (contextvars).

A plain ThreadPoolExecutor starts its threads with an empty context, so whatever the caller
set there is lost in the jobs: a Prefect flow run's context, for one, without which the log
lines of the jobs never reach the run's logs. Each job gets its own copy (one Context cannot
be entered by two threads at once).
"""

from __future__ import annotations

import contextvars
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable


class ContextThreadPool(ThreadPoolExecutor):
    """ThreadPoolExecutor that carries the submitter's context into each job (``map`` included)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)
