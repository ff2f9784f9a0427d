"""Doctor's results as plain data and the runner that times them (a leaf: only the errors module).

The source kinds' doctor steps take a :class:`Checklist` and return a :class:`Sample`; the
registry names both in a kind's type, so they live here, apart from the steps that connect.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import IbreportsError


@dataclass
class Step:
    """One check: ``ok`` True (passed), False (failed) or None (skipped)."""

    name: str
    ok: bool | None
    ms: int = 0
    detail: str = ""
    cause: str = ""
    fix: str = ""
    code: int = 0  # the exit code this failure maps to (0 unless failed)

    @property
    def status(self) -> str:
        return {True: "ok", False: "FAIL", None: "skip"}[self.ok]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


@dataclass
class Section:
    """The steps for one thing diagnosed: a source, the PGP keys or the archive."""

    kind: str  # "source" | "pgp" | "archive"
    name: str
    title: str
    steps: list[Step] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "title": self.title, "steps": [s.to_dict() for s in self.steps]}


class Degraded(Exception):
    """A step failed but produced something later steps can still use (e.g. a legacy login)."""

    def __init__(self, error: IbreportsError, value: Any, detail: str = "") -> None:
        super().__init__(error.message)
        self.error, self.value, self.detail = error, value, detail


class Checklist:
    """Runs steps in order, times them, and skips the rest after a blocking failure."""

    def __init__(self, section: Section) -> None:
        self.section = section
        self.blocked = False

    def step(self, name: str, fn: Callable[..., tuple[Any, str]], *args: Any, blocking: bool = True) -> Any:
        """Run ``fn(*args) -> (value, detail)``; return the value, or None when it failed or was skipped."""
        if self.blocked:
            return self.skip(name, "an earlier step failed")
        start = time.monotonic()
        try:
            value, detail = fn(*args)
        except Degraded as exc:
            self._fail(name, start, exc.error, exc.detail)
            return exc.value
        except IbreportsError as exc:
            self._fail(name, start, exc, "")
            self.blocked = self.blocked or blocking
            return None
        except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen library error: report, go on
            err = IbreportsError(f"Unexpected {type(exc).__name__}: {exc}.", "Run with --debug and report this.")
            self._fail(name, start, err, "")
            self.blocked = self.blocked or blocking
            return None
        self.section.steps.append(Step(name, True, _ms(start), detail))
        return value

    def skip(self, name: str, detail: str) -> None:
        self.section.steps.append(Step(name, None, 0, detail))
        return None

    def _fail(self, name: str, start: float, exc: IbreportsError, detail: str) -> None:
        self.section.steps.append(Step(name, False, _ms(start), detail, exc.message, exc.remedy, exc.exit_code))


def _ms(start: float) -> int:
    return int(round((time.monotonic() - start) * 1000))


@dataclass(frozen=True)
class Sample:
    """One encrypted file downloaded from a source into doctor's private folder."""

    source: str
    name: str
    path: Path
