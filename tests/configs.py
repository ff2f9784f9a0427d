"""One way to write test config files: a [[sources]] table from a server fixture plus overrides.

Secrets default to references (``env:TEST_SSH_PASSPHRASE``, ``env:TEST_FTP_PASSWORD``) so they never
sit in a file; a test that wants them inline overrides the field.
"""

from __future__ import annotations

import json
from pathlib import Path


def source_toml(fields: dict) -> str:
    return "[[sources]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in fields.items())


def sftp_toml(server, key, known_hosts: Path, **overrides) -> str:
    fields = {
        "name": "ibkr-sftp", "kind": "sftp", "host": server.host, "port": server.port,
        "username": server.username, "key_file": str(key[0]), "key_passphrase": "env:TEST_SSH_PASSPHRASE",
        "known_hosts": str(known_hosts), "remote_dir": str(server.root / "outgoing"),
        "settle_seconds": 0, "timeout": 10,
    }
    return source_toml({**fields, **overrides})


def ftp_toml(server, **overrides) -> str:
    fields = {
        "name": "ibkr-ftp", "kind": "ftp", "host": server.host, "port": server.port,
        "username": server.username, "password": "env:TEST_FTP_PASSWORD", "remote_dir": "outgoing",
        "settle_seconds": 0, "timeout": 10,
    }
    return source_toml({**fields, **overrides})


def _toml(value) -> str:
    if isinstance(value, dict):  # an inline table; JSON covers strings, numbers, booleans and lists
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)
