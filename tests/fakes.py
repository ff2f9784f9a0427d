"""A toy on-demand source (no listing: it produces statements into staging, like the Flex Web Service).

The in-memory listing kind that passes the remote contract suite is tests/memory_remote.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Iterator

from ibreports.files import create_private


@dataclass(frozen=True)
class Made:
    """What the toy on-demand source holds: a statement's name, its date and its content."""

    name: str
    day: date
    data: bytes


class OnDemandRemote:
    """A toy on-demand source: no listing; ``produce`` writes each statement of the range into staging."""

    def __init__(self, statements: list[Made]) -> None:
        self.statements = statements

    def produce(self, since: date | None, until: date | None, staging: Path) -> Iterator:
        from ibreports.remote.registry import Produced

        for made in self.statements:
            if (since and made.day < since) or (until and made.day > until):
                continue
            path = staging / made.name
            fd = create_private(path)
            with open(fd, "wb") as out:
                out.write(made.data)
            yield Produced(made.name, path, len(made.data), hashlib.sha256(made.data).hexdigest())

    def close(self) -> None:
        pass

    def __enter__(self) -> "OnDemandRemote":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
