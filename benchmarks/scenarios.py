"""The measured commands: (a) OpenSSH sftp, (b) the hand-written script, (c)/(d)/(e)/(f) ibreports
fetch in a subprocess, and the Prefect flow. Each returns plain numbers."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from infra import S3_ENV, RssPoller
from workload import PASSPHRASE, Keys

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


class Bench:
    """Everything the scenarios share: work folder, keys, sshd, S3 server, the script's gpg home."""

    def __init__(self, work: Path, keys: Keys, sshd, s3, script_home: Path, passfile: Path) -> None:
        self.work, self.keys, self.sshd, self.s3 = work, keys, sshd, s3
        self.script_home, self.passfile = script_home, passfile
        self.known_hosts = sshd.write_known_hosts(work / "known_hosts")
        self.env = {**os.environ, **S3_ENV, "IBREPORTS_KEY_PASSPHRASE": PASSPHRASE,
                    "PYTHONPATH": str(REPO), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def remote(self, name: str) -> Path:
        return self.sshd.root / name

    def fresh(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o700, parents=True)
        return path

    # -- (a) and (b) ------------------------------------------------------------------------

    def _batch(self, remote: Path, names: list[str] | None, dest: Path) -> Path:
        batch = self.work / "sftp.batch"
        lines = [f"get {remote}/* {dest}/"] if names is None else [f"get {remote}/{n} {dest}/" for n in names]
        batch.write_text("\n".join(lines) + "\n")
        return batch

    def openssh(self, remote: Path, names: list[str] | None = None) -> float:
        """(a) ``sftp -b`` download alone, with the unencrypted copy of the key and pinned host key."""
        dest = self.fresh("out-a")
        batch = self._batch(remote, names, dest)
        start = quiet_start()
        subprocess.run(["sftp", "-q", "-b", str(batch), "-P", str(self.sshd.port), "-i", str(self.keys.ssh_plain),
                        "-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                        "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                        "-o", "StrictHostKeyChecking=yes", f"{self.sshd.username}@127.0.0.1"],
                       check=True, capture_output=True)
        elapsed = time.perf_counter() - start
        expected = len(names) if names is not None else len(list(remote.iterdir()))
        assert len(list(dest.iterdir())) == expected, "sftp -b did not download every file"
        shutil.rmtree(dest)
        return elapsed

    def handwritten(self, remote: Path, names: list[str] | None = None) -> tuple[float, dict, Path]:
        """(b) benchmarks/handwritten.sh timed as a whole; returns (seconds, phases, output folder)."""
        staging, dest = self.fresh("script-staging"), self.fresh("out-b")
        batch = self._batch(remote, names, staging)
        start = quiet_start()
        proc = subprocess.run(["bash", str(HERE / "handwritten.sh"), str(self.sshd.port), self.sshd.username,
                               str(self.keys.ssh_plain), str(self.known_hosts), str(batch), str(self.script_home),
                               str(self.passfile), str(staging), str(dest)],
                              check=True, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        phases = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", proc.stderr.splitlines()[-1])}
        shutil.rmtree(staging)
        return elapsed, phases, dest

    # -- ibreports --------------------------------------------------------------------------

    def config(self, remote: Path, archive: str, workers: int | None = None) -> Path:
        endpoint = f'endpoint_url = "{self.s3.endpoint}"\nregion = "us-east-1"\n' if archive.startswith("s3://") else ""
        run = f"\n[run]\nworkers = {workers}\n" if workers else ""
        text = f"""[[sources]]
name = "bench"
kind = "sftp"
host = "127.0.0.1"
port = {self.sshd.port}
username = "{self.sshd.username}"
key_file = "{self.keys.ssh_key}"
key_passphrase = "env:IBREPORTS_KEY_PASSPHRASE"
known_hosts = "{self.known_hosts}"
remote_dir = "{remote}"
settle_seconds = 0

[pgp]
secret_key_file = "{self.keys.pgp_secret}"
passphrase = "env:IBREPORTS_KEY_PASSPHRASE"

[archive]
url = "{archive}"
{endpoint}
[retention]
purge_days = 100
warn_days = 14
{run}"""
        path = self.work / "ibreports.toml"
        path.write_text(text)
        return path

    def fetch(self, config: Path, poll_rss: bool = False) -> dict:
        """``ibreports fetch`` in a subprocess (via timed_fetch.py); wall time plus its own figures."""
        out = self.work / "timed.json"
        out.unlink(missing_ok=True)
        start = quiet_start()
        proc = subprocess.Popen([sys.executable, str(HERE / "timed_fetch.py"), str(out), "--config", str(config),
                                 "fetch"], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        poller = RssPoller(proc.pid) if poll_rss else None
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"ibreports fetch exited {proc.returncode}: {stdout[-2000:]} {stderr[-2000:]}")
        result = json.loads(out.read_text())
        result["wall_s"] = wall
        if poller:
            result["polled_rss_mb"] = poller.stop()
        return result

    def flow(self, config: Path) -> dict:
        """The retrieve-statements Prefect flow (ephemeral server, temporary PREFECT_HOME)."""
        home = self.fresh("prefect-home")
        code = ("import time, json, sys; t0 = time.perf_counter()\n"
                "from flows.retrieve import retrieve_statements\n"
                "t1 = time.perf_counter(); r = retrieve_statements(config=sys.argv[1]); t2 = time.perf_counter()\n"
                "print(json.dumps({'import_s': t1 - t0, 'flow_s': t2 - t1, 'total_s': t2 - t0}))\n")
        env = {**self.env, "PREFECT_HOME": str(home), "PREFECT_API_URL": "", "PREFECT_LOGGING_LEVEL": "WARNING"}
        start = quiet_start()
        proc = subprocess.run([sys.executable, "-c", code, str(config)], env=env, cwd=REPO,
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"flow exited {proc.returncode}: {proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["wall_s"] = wall
        return result


def quiet_start() -> float:
    """Flush every dirty page first (untimed), then start the clock.

    Without it, each measurement pays for the writeback of what the previous one wrote (the
    script's 600 MB of plaintext, for instance), and the order of the contestants decides.
    """
    os.sync()
    return time.perf_counter()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_plaintexts(script_out: Path, archive: Path) -> int:
    """Every file the script decrypted is in the local archive, byte for byte; returns the count."""
    archived = {p.name: p for p in (archive / "statements").rglob("*") if p.is_file()}
    for path in script_out.iterdir():
        assert sha256(path) == sha256(archived[path.name]), f"{path.name}: ibreports and gpg -d disagree"
    return len(list(script_out.iterdir()))
