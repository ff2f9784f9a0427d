"""Prefect flows: thin wrappers around the ibreports library (see prefect.yaml).

``retrieve-statements`` (daily), ``backfill-statements`` (a date range),
``generate-keys`` and ``backup-keys``. The library itself imports no Prefect.

Prefect keeps its database, persisted states (a failed run's exception included)
and profiles under PREFECT_HOME, created with the process umask (often 0644 files).
Importing the flows (every flow-run process does) makes that folder private, 0700,
so nothing under it can be read by other users.
"""

from __future__ import annotations

import os
from pathlib import Path


def private_prefect_home() -> Path | None:
    """chmod PREFECT_HOME 0700 when it is ours and open to others; returns it (None if absent)."""
    from prefect.settings import PREFECT_HOME

    home = Path(PREFECT_HOME.value()).expanduser()
    try:
        st = home.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            home.chmod(0o700)
    except OSError:  # missing, or not ours to change: Prefect creates it as it likes
        return None
    return home


private_prefect_home()
