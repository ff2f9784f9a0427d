"""Servers and probes for the benchmarks: sshd (the test fixture's), a counting moto S3 server,
an RSS poller, the machine description."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "bench-access-key", "AWS_SECRET_ACCESS_KEY": "bench-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true",
}


class CountingS3:
    """moto's S3 over real HTTP on a free loopback port, counting requests by kind (server side)."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.counts: Counter[str] = Counter()
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ, start_response):
            query = environ.get("QUERY_STRING", "")
            method = environ["REQUEST_METHOD"]
            kind = "ListObjectsV2" if method == "GET" and "list-type=2" in query else method
            self.counts[kind] += 1
            return app(environ, start_response)

        self.server = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=MotoRequestHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        os.environ.update(S3_ENV)
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def new_bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name

    def empty_bucket(self, name: str) -> None:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=name, Delete={"Objects": keys})

    def stop(self) -> None:
        self.server.shutdown()


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _processes() -> list[tuple[int, int, str]]:
    """(pid, ppid, cmdline) of every process."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            found.append((int(entry), ppid, cmd))
    return found


class RssPoller:
    """Samples every 50 ms: the process ``pid``, its descendants, and ibreports' gpg-agents
    (daemonized, so not descendants). Keeps the peak of each and of their sum."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = {"ibreports": 0.0, "children": 0.0, "gpg_agents": 0.0, "total": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            procs = _processes()
            tree, frontier = set(), {self.pid}
            while frontier:
                frontier = {p for p, pp, _ in procs if pp in frontier}
                tree |= frontier
            agents = {p for p, _, cmd in procs if "gpg-agent" in cmd and "ibr-gpg-" in cmd} - tree
            sample = {"ibreports": _rss_mb(self.pid), "children": sum(_rss_mb(p) for p in tree),
                      "gpg_agents": sum(_rss_mb(p) for p in agents)}
            sample["total"] = sum(sample.values())
            for key, value in sample.items():
                self.peak[key] = max(self.peak[key], value)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v, 1) for k, v in self.peak.items()}


def machine() -> dict:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))

    def version(cmd: list[str]) -> str:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (proc.stdout or proc.stderr).splitlines()[0].strip()
        except (OSError, IndexError):
            return "?"

    import boto3
    import gnupg
    import moto
    import paramiko

    return {
        "nproc": os.cpu_count(), "cpu": model, "ram_gb": round(int(mem.split()[1]) / 1024 / 1024, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "gpg": version(["gpg", "--version"]), "openssh": version(["ssh", "-V"]),
        "paramiko": paramiko.__version__, "python-gnupg": gnupg.__version__,
        "boto3": boto3.__version__, "moto": moto.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
