"""Shared set-up for the reliability suite (no tests here): seeded deliveries with plaintext markers,
config files, `ibreports fetch` as a subprocess, and the checks every scenario ends with.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests import configs
from tests.fixtures.pgpkeys import encrypt_bytes

CLI = [sys.executable, "-c", "from ibreports.cli import run; run()"]


@dataclass
class Delivery:
    """What the server holds and what the archive must end up with."""

    source: str
    files: dict[str, bytes] = field(default_factory=dict)  # remote name -> bytes on the server
    plain: dict[str, bytes] = field(default_factory=dict)  # remote name -> decrypted statement
    markers: list[bytes] = field(default_factory=list)  # strings only the plaintexts contain

    def expected(self) -> dict[str, bytes]:
        """Archive key -> exact bytes, for every file."""
        out = {}
        for name, data in self.files.items():
            account, _q, _s, end = name.split(".")[:4]
            month = f"{end[:4]}/{end[4:6]}"
            if name.endswith((".pgp", ".asc")):
                out[f"encrypted/{self.source}/{month}/{name}"] = data
                out[f"statements/{account}/{month}/{name.rsplit('.', 1)[0]}"] = self.plain[name]
            else:
                out[f"statements/{account}/{month}/{name}"] = data
        return out


def seed(outgoing: Path, public_file: Path, source: str, count: int, size: int, start_day: int = 1,
         plain_every: int = 0) -> Delivery:
    """``count`` encrypted statements of about ``size`` bytes (random, so incompressible) in ``outgoing``."""
    outgoing.mkdir(parents=True, exist_ok=True)
    delivery = Delivery(source)
    for i in range(count):
        day = start_day + i
        account = f"U{1000000 + i:07d}"
        stamp = f"2026{1 + (day // 28) % 12:02d}{1 + day % 28:02d}"
        marker = b"PLAINTEXT-" + secrets.token_hex(12).encode()
        body = b"<FlexQueryResponse>" + marker + os.urandom(size).hex().encode()[:size] + b"</FlexQueryResponse>\n"
        if plain_every and i % plain_every == plain_every - 1:  # an unencrypted sFTP delivery
            name = f"{account}.Activity.{stamp}.{stamp}.csv"
            (outgoing / name).write_bytes(body)
            delivery.files[name] = body
        else:
            name = f"{account}.DailyActivity.{stamp}.{stamp}.xml.pgp"
            encrypt_bytes(public_file, body, outgoing / name)
            delivery.files[name] = (outgoing / name).read_bytes()
            delivery.plain[name] = body
        delivery.markers.append(marker)
    return delivery


def sftp_toml(name: str, port: int, server, key, known_hosts: Path, **extra) -> str:
    """A source reached through ``port`` (often a fault proxy in front of the server)."""
    return configs.sftp_toml(server, key, known_hosts, name=name, host="127.0.0.1", port=port, **extra)


def ftp_toml(name: str, host: str, port: int, server, **extra) -> str:
    # The deliveries here include a plain file: accepted only where allow_plain says so (FTP: off by default).
    return configs.ftp_toml(server, name=name, host=host, port=port, **{"allow_plain": True, **extra})


def write_config(folder: Path, sources: str, pgp_key, archive: str, staging: Path, workers: int = 4) -> Path:
    cfg = folder / "ibreports.toml"
    cfg.write_text(f"""{sources}
[pgp]
secret_key_file = "{pgp_key.secret_file}"
passphrase = "env:TEST_PGP_PASSPHRASE"

{archive}

[run]
staging_dir = "{staging}"
workers = {workers}
""")
    return cfg


def ftp_via_proxy(proxy, server, rule) -> int:
    """Mirror an FTP server's control port and every passive port on 127.0.0.2; ``rule`` on the data channels.

    The client connects its data channels to the control peer's address, so they pass through the proxy
    too. The fixed passive ports are taken first: the control route's free port cannot then collide.
    Returns the control port to configure.
    """
    for port in server.server.handler.passive_ports:
        proxy.route(port, listen_port=port, listen_host="127.0.0.2").rules.append(rule)
    return proxy.route(server.port, listen_host="127.0.0.2").port


def local_archive_toml(root: Path) -> str:
    return f'[archive]\nurl = "{root}"\n'


def s3_archive_toml(endpoint: str, bucket: str, prefix: str = "ib") -> str:
    return f'[archive]\nurl = "s3://{bucket}/{prefix}"\nendpoint_url = "{endpoint}"\nregion = "us-east-1"\n'


def cli_env(pgp_key, ssh_key, tmpdir: Path, **extra: str) -> dict[str, str]:
    """The subprocess environment: passphrases by reference, a private TMPDIR to search afterwards."""
    env = dict(os.environ)
    env.update(TEST_PGP_PASSPHRASE=pgp_key.passphrase, TEST_SSH_PASSPHRASE=ssh_key[2], TMPDIR=str(tmpdir))
    env.update(extra)
    env.pop("IBREPORTS_CONFIG", None)
    return env


def run_cli(cfg: Path, env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "--config", str(cfg), *args], env=env, capture_output=True, timeout=timeout)


def start_cli(cfg: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "--config", str(cfg), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def local_objects(root: Path) -> tuple[dict[str, bytes], list[Path]]:
    """(key -> bytes of every archived object outside runs/, leftover temporary files: ``.tmp-*`` in the root)."""
    objects, temps = {}, []
    if not root.exists():
        return objects, temps
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        key = path.relative_to(root).as_posix()
        if key.startswith(".tmp-"):
            temps.append(path)
        elif not key.startswith("runs/"):
            objects[key] = path.read_bytes()
    return objects, temps


def s3_objects(client, bucket: str, prefix: str = "ib") -> dict[str, bytes]:
    keys = [o["Key"] for p in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
            for o in p.get("Contents", [])]
    return {k[len(prefix) + 1:]: client.get_object(Bucket=bucket, Key=k)["Body"].read()
            for k in keys if not k.startswith(prefix + "/runs/")}


def assert_archived_exactly(objects: dict[str, bytes], expected: dict[str, bytes]) -> None:
    """Every expected object present with the same SHA-256, and nothing else."""
    assert sorted(objects) == sorted(expected)
    for key, data in expected.items():
        assert hashlib.sha256(objects[key]).hexdigest() == hashlib.sha256(data).hexdigest(), key


def files_containing(folders: list[Path], markers: list[bytes]) -> list[Path]:
    """Every file under ``folders`` holding any of ``markers`` (plaintext left behind)."""
    hits = []
    for folder in folders:
        if not folder.exists():
            continue
        for path in folder.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink():
                    data = path.read_bytes()
                    if any(m in data for m in markers):
                        hits.append(path)
            except OSError:
                continue
    return hits


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of everything under ``root`` except the ``skip`` folders."""
    found = {}
    for path in root.rglob("*"):
        if any(path == s or s in path.parents for s in skip):
            continue
        try:
            st = path.lstat()
        except OSError:
            continue
        found[str(path)] = (st.st_size, st.st_mtime_ns)
    return found


def kill_gpg_agents(tmpdir: Path) -> int:
    """Stop agents of GnuPG homes a killed run left in ``tmpdir``; returns how many homes there were."""
    homes = [h for h in tmpdir.glob("ibr-gpg-*") if h.is_dir()]
    for home in homes:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, timeout=30)
    return len(homes)
