"""Helpers shared by test modules (test modules never import each other)."""

from __future__ import annotations

import dataclasses

from ibreports.config import SourceConfig
from ibreports.remote.registry import get_kind


def source_config(kind: str, **fields) -> SourceConfig:
    """A SourceConfig of ``kind`` from flat keys, as a [[sources]] table holds them: the common
    keys go to the SourceConfig, the kind's own keys to its settings (checked like the parser does)."""
    common = {f.name for f in dataclasses.fields(SourceConfig)}
    settings_type = get_kind(kind).settings
    settings = settings_type(**{k: v for k, v in fields.items() if k not in common})
    checked = getattr(settings, "checked", None)
    return SourceConfig(kind=kind, settings=checked() if checked else settings,
                        **{k: v for k, v in fields.items() if k in common})
