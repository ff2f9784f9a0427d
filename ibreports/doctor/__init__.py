"""``ibreports doctor``: every source, the PGP keys and the archive, checked step by step.

Each step is a plain :class:`Step` (name, ok, ms, detail, cause, fix) so the CLI,
``--json`` and the Prefect side share one result. Steps after a failure that makes
them meaningless are shown as skipped. Network steps never wait longer than
``min(source.timeout, CAP)``.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, SourceConfig
from ..remote.registry import describe, kind_of
from .checks import check_archive, check_pgp
from .steps import CAP, Checklist, Sample, Section, Step

__all__ = ["CAP", "Diagnosis", "Section", "Step", "diagnose", "format_text"]


@dataclass
class Diagnosis:
    """All sections, in the order they ran."""

    sections: list[Section] = field(default_factory=list)

    @property
    def steps(self) -> list[Step]:
        return [s for section in self.sections for s in section.steps]

    @property
    def failures(self) -> list[Step]:
        return [s for s in self.steps if s.ok is False]

    @property
    def exit_code(self) -> int:
        """0 all ok; 3 connection, authentication or host key; 2 configuration or keys; 1 anything else."""
        return max((s.code for s in self.failures), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "sections": [s.to_dict() for s in self.sections]}


def diagnose(config: Config, names: list[str] | None = None) -> Diagnosis:
    """Check the selected sources (all by default), then the PGP keys, then the archive."""
    sources = config.select(names)
    result = Diagnosis()
    # Samples and probe copies land here: private (0700), removed whatever happens.
    staging = Path(tempfile.mkdtemp(prefix="ibr-doctor-"))
    try:
        samples: list[Sample] = []
        for source in sources:
            sample = _check_source(source, result, staging)
            if sample is not None:
                samples.append(sample)
        with ExitStack() as stack:
            section = Section("pgp", "pgp", "PGP keys")
            result.sections.append(section)
            check_pgp(config, Checklist(section), stack, samples, staging)
        section = Section("archive", "archive", f"archive {config.archive.url}")
        result.sections.append(section)
        check_archive(config.archive, Checklist(section), staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _check_source(source: SourceConfig, result: Diagnosis, staging: Path) -> Sample | None:
    source = dataclasses.replace(source, timeout=min(source.timeout, CAP))
    section = Section("source", source.name, f"source {source.name} ({describe(source)})")
    result.sections.append(section)
    with ExitStack() as stack:  # closes sockets, transports and sessions in reverse order
        return kind_of(source).doctor(source, Checklist(section), stack, staging)


def format_text(result: Diagnosis) -> str:
    """One line per step; a failure adds its cause and fix; a summary line ends it."""
    lines: list[str] = []
    width = max([8, *(len(s.name) for s in result.steps)])
    for section in result.sections:
        lines.append(section.title)
        for step in section.steps:
            timing = f"{step.ms:>5} ms" if step.ok is not None else " " * 8
            lines.append(f"  {step.status:<5} {step.name:<{width}} {timing}  {step.detail}".rstrip())
            if step.ok is False:
                lines.append(f"        cause: {step.cause}")
                if step.fix:
                    lines.append(f"        fix: {step.fix}")
    failed = result.failures
    if failed:
        names = ", ".join(dict.fromkeys(s.name for s in failed))
        lines.append(f"doctor: {len(failed)} check(s) failed ({names}); exit {result.exit_code}")
    else:
        lines.append(f"doctor: all {sum(1 for s in result.steps if s.ok)} checks ok")
    return "\n".join(lines)
