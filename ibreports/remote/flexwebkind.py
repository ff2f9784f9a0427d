"""The ``flexweb`` kind (IBKR Flex Web Service v3): its registration; the code is in remote/flexweb/."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .flexweb.settings import FlexSettings
from .registry import Capabilities, SourceKind, register

if TYPE_CHECKING:
    from contextlib import ExitStack

    from ..config import SourceConfig
    from ..doctor.steps import Checklist, Sample
    from .flexweb.remote import FlexRemote


def _open(source: "SourceConfig") -> "FlexRemote":
    from .flexweb.remote import FlexRemote

    return FlexRemote(source)


def _doctor(source: "SourceConfig", cl: "Checklist", stack: "ExitStack", staging: Path) -> "Sample | None":
    from ..doctor.flexweb import check_flexweb

    check_flexweb(source, cl)
    return None  # statements come over TLS, not PGP: no sample for the key check


def _slots(source: "SourceConfig") -> list[str]:
    """One request at a time per token (IBKR's limits), so one slot for the service's host."""
    return [f"ibkr-{source.settings.address}"]


FLEXWEB = register(SourceKind(
    name="flexweb",
    settings=FlexSettings,
    open=_open,
    doctor=_doctor,
    slots=_slots,
    capabilities=Capabilities(listing=False, delete=False, host_keys=False),
))
