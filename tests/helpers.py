"""Helpers shared by test modules (test modules never import each other)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import ibreports
from ibreports.config import SourceConfig
from ibreports.remote.registry import get_kind
from tests.fixtures.pgpkeys import encrypt_bytes


def source_config(kind: str, **fields) -> SourceConfig:
    """A SourceConfig of ``kind`` from flat keys, as a [[sources]] table holds them: the common
    keys go to the SourceConfig, the kind's own keys to its settings (checked like the parser does)."""
    common = {f.name for f in dataclasses.fields(SourceConfig)}
    settings_type = get_kind(kind).settings
    settings = settings_type(**{k: v for k, v in fields.items() if k not in common})
    checked = getattr(settings, "checked", None)
    return SourceConfig(kind=kind, settings=checked() if checked else settings,
                        **{k: v for k, v in fields.items() if k in common})


# -- deliveries on a server, a config around them, what the archive holds ---------------------

PLAIN = {
    "U1234567.DailyActivity.20261101.20261101.xml": b"<FlexQueryResponse queryName='DailyActivity'>one</FlexQueryResponse>\n",
    "U7654321.DailyActivity.20261102.20261102.xml": b"<FlexQueryResponse queryName='DailyActivity'>two</FlexQueryResponse>\n",
    "F1234567.TradeConfirms.20261103.20261103.xml": b"<FlexQueryResponse queryName='TradeConfirms'>three</FlexQueryResponse>\n",
}
UNENCRYPTED = ("DU1234567.Activity.20261104.20261104.csv", b"Header,Value\nCash,100\n")
# Outside IBKR's name grammar: archived under statements/_unsorted/, by the file's UTC date.
UNPARSEABLE = ("activity_export.xml.pgp", b"<FlexQueryResponse>unsorted</FlexQueryResponse>\n")
UNPARSEABLE_MTIME = int(time.time()) - 2 * 86400


def seed(outgoing: Path, public_file: Path, unparseable: bool = False) -> dict[str, bytes]:
    """Encrypted deliveries (binary and armored) plus one plain file, and optionally one name
    outside the grammar; returns name -> server bytes."""
    outgoing.mkdir(parents=True, exist_ok=True)
    delivered = {}
    for i, (name, data) in enumerate(PLAIN.items()):
        suffix = ".asc" if i == 1 else ".pgp"
        encrypt_bytes(public_file, data, outgoing / (name + suffix), armor=suffix == ".asc")
        delivered[name + suffix] = (outgoing / (name + suffix)).read_bytes()
    (outgoing / UNENCRYPTED[0]).write_bytes(UNENCRYPTED[1])
    delivered[UNENCRYPTED[0]] = UNENCRYPTED[1]
    if unparseable:
        path = outgoing / UNPARSEABLE[0]
        encrypt_bytes(public_file, UNPARSEABLE[1], path)
        os.utime(path, (UNPARSEABLE_MTIME, UNPARSEABLE_MTIME))
        delivered[UNPARSEABLE[0]] = path.read_bytes()
    return delivered


def write_config(tmp: Path, source_toml: str, pgp_key, archive_toml: str) -> Path:
    cfg = tmp / "ibreports.toml"
    cfg.write_text(
        f"""{source_toml}
[pgp]
secret_key_file = "{pgp_key.secret_file}"
passphrase = "env:TEST_PGP_PASSPHRASE"

{archive_toml}
"""
    )
    return cfg


def local_archive(tmp_path: Path) -> tuple[str, Path]:
    """The [archive] table of a local archive under ``tmp_path``, and its folder."""
    return f'[archive]\nurl = "{tmp_path / "archive"}"\n', tmp_path / "archive"


def s3_archive(s3_server: str, bucket: str) -> str:
    """The [archive] table of an S3 archive under the ib/ prefix of ``bucket`` at ``s3_server``."""
    return f'[archive]\nurl = "s3://{bucket}/ib"\nendpoint_url = "{s3_server}"\nregion = "us-east-1"\n'


def archived_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).parts[0] == "runs"
    }


def run_id_of(output: str) -> str:
    """The flow run id that `prefect deployment run` printed."""
    return re.search(r"UUID: ([0-9a-f-]{36})", output).group(1)


# -- an alert receiver -------------------------------------------------------------------------

TOKEN = "hook-9f2c1e7d-s3cr3t"


class Receiver:
    """An HTTP endpoint that records every JSON body posted to it."""

    def __init__(self, status: int = 200) -> None:
        self.messages: list[dict] = []
        self.raw: list[bytes] = []  # bodies only: the path is the target URL itself
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.paths.append(self.path)
                receiver.raw.append(body)
                receiver.messages.append(json.loads(body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/{TOKEN}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# -- running code as another local user ---------------------------------------------------------

NOBODY = 65534


def as_other_user(code: str, *args: str, uid: int = NOBODY, timeout: float = 60):
    """Run Python ``code`` as ``uid`` with the library importable, wherever the checkout lies.

    A checkout (and its .venv) under a 0700 folder (/root, any mktemp -d) is out of the other
    user's reach: the library is copied to a fresh 0755 folder, and the code runs under the first
    interpreter that user can start (this venv's base, else the system's python3).
    Returns the CompletedProcess (text).
    """
    user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    readable = Path(tempfile.mkdtemp(prefix="ibreports-other-user-"))
    try:
        readable.chmod(0o755)
        shutil.copytree(Path(ibreports.__file__).parent, readable / "ibreports",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for path in [readable, *readable.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        probe = "import sys; assert sys.version_info >= (3, 11)"
        for python in dict.fromkeys([os.path.realpath(sys._base_executable), sys.executable, "/usr/bin/python3"]):
            if subprocess.run([*user, python, "-I", "-c", probe], capture_output=True, timeout=timeout).returncode == 0:
                break
        else:
            raise RuntimeError(f"no Python >= 3.11 that uid {uid} can run")
        prelude = f"import sys; sys.path.insert(0, {str(readable)!r})\n"
        return subprocess.run([*user, python, "-I", "-c", prelude + code, *args], capture_output=True, text=True,
                              timeout=timeout, cwd=readable)
    finally:
        shutil.rmtree(readable)
