"""Prefect flows: thin wrappers around the ibreports library (see prefect.yaml).

``retrieve-statements`` (daily), ``backfill-statements`` (a date range),
``generate-keys`` and ``backup-keys``. The library itself imports no Prefect.
"""
