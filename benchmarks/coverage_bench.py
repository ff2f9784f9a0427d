"""Benchmark: ``ibreports coverage`` and ``ibreports verify`` over 10,000 archived statements (issues 15, 20).

The archive is filled directly at the keys ibreports computes: 40 accounts x 250 NYSE business
days of DailyActivity (exactly 10,000 statements, each a small Flex XML), with 3 business days per
account left out; the sshd folder holds every missing day's file, so coverage also lists the
server and finds each gap on it. Each command runs in a subprocess through timed_fetch.py, which
counts archive calls: coverage must list the archive (statements/, conflicts/, runs/) and read no
statement. ``coverage --html`` draws the calendar of all 40 kinds in the same run. ``verify`` is
run through its command-line entry point, whatever its implementation is.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

from scenarios import HERE, Bench, quiet_start

ACCOUNTS = 40
DAYS = 250  # statements per account
MISSING = 3  # business days per account without a statement (apart from each other)


def populate(archive: Path, remote: Path) -> tuple[int, int]:
    """Statements at their archive keys, and every missing day's file on the server; (statements, gaps)."""
    from ibreports.archive.local import LocalArchive
    from ibreports.calendars import BusinessDays
    from ibreports.config import ArchiveConfig
    from ibreports.files import sha256_file
    from ibreports.report import RunReport
    from ibreports.statements import parse, statement_key

    span = DAYS + MISSING
    # Up to today - 4: the newest day old enough to be a gap ([coverage] grace_days = 3), so none trails.
    days = BusinessDays("NYSE").between(date.today() - timedelta(days=420), date.today() - timedelta(days=4))[-span:]
    store = LocalArchive(ArchiveConfig(url=str(archive)))
    staged = archive.parent / "coverage-staged.xml"
    count = gaps = 0
    written: dict[str, str] = {}  # the ledger verify checks against, as a real run records it
    for a in range(ACCOUNTS):
        account = f"U{7000000 + a}"
        missing = {1 + a % 50 + k * (span // MISSING) for k in range(MISSING)}
        for i, day in enumerate(days):
            name = f"{account}.DailyActivity.{day:%Y%m%d}.{day:%Y%m%d}.xml"
            if i in missing:
                (remote / (name + ".pgp")).write_bytes(b"not fetched")
                gaps += 1
                continue
            staged.write_bytes(f'<FlexQueryResponse queryName="DailyActivity" type="AF"><FlexStatements count="1">'
                               f'<FlexStatement accountId="{account}" fromDate="{day:%Y%m%d}" toDate="{day:%Y%m%d}"/>'
                               f"</FlexStatements></FlexQueryResponse>\n".encode())
            key = statement_key(parse(name, 0))
            written[key] = sha256_file(staged)
            store.put(key, staged, written[key], {}, private=True)
            staged.unlink()  # the archive may have taken the file over (a hard link): never write it again
            count += 1
    staged.unlink(missing_ok=True)
    run = RunReport(run_id="bench00", started="2026-12-01T00:00:00+00:00", written=written)
    store.put_bytes("runs/2026/12/20261201T000000Z-bench00.json", run.to_record(), {"kind": "run-record"})
    return count, gaps


def timed(b: Bench, config: Path, *args: str) -> dict:
    out = b.work / "timed-coverage.json"
    out.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = quiet_start()
    proc = subprocess.run([sys.executable, str(HERE / "timed_fetch.py"), str(out), "--config", str(config), *args],
                          env=b.env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out.read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result.update(wall_s=wall, cpu_s=cpu, stdout=proc.stdout)
    return result


def coverage_workload(b: Bench, runs: int, log) -> dict:
    remote, archive = b.fresh("coverage-remote"), b.fresh("archive-coverage")
    log(f"coverage: filling the archive with {ACCOUNTS * DAYS} daily statements")
    statements, gaps = populate(archive, remote)
    config = b.config(remote, str(archive))
    res: dict = {"statements": statements, "gaps": gaps, "coverage": [], "coverage_own": [], "verify": [], "verify_own": []}
    page = b.work / "coverage.html"
    for i in range(runs):
        log(f"coverage run {i + 1}/{runs}: ibreports coverage --json --html (archive listing + sshd listing)")
        out = timed(b, config, "coverage", "--json", "--html", str(page))
        doc = json.loads(out["stdout"])
        assert out["rc"] == 1 and doc["gaps"] == gaps, (out["rc"], doc["gaps"], gaps)
        assert all(g["status"] == "on-server" for k in doc["kinds"] for g in k["gaps"])
        assert sum(k["count"] for k in doc["kinds"]) == statements and len(doc["kinds"]) == ACCOUNTS
        res["html_bytes"] = page.stat().st_size
        page.unlink()
        res["coverage"].append(out["wall_s"])
        res["coverage_own"].append(out["ibreports_s"])
        res.setdefault("coverage_cpu", []).append(round(out["cpu_s"], 3))
        res["coverage_calls"] = out["calls"]
        log(f"coverage run {i + 1}/{runs}: ibreports verify --json")
        out = timed(b, config, "verify", "--json")
        assert out["rc"] == 0, (out["rc"], out["stdout"][-500:])  # verify's JSON may change: its exit code may not
        checked = json.loads(out["stdout"])
        assert checked["ok"] == checked["checked"] >= statements, (checked["ok"], checked["checked"])  # each one read
        res["verify"].append(out["wall_s"])
        res["verify_own"].append(out["ibreports_s"])
        res.setdefault("verify_cpu", []).append(round(out["cpu_s"], 3))
        res["verify_peak_rss_mb"] = round(out["peak_rss_mb"], 1)
    return res


def summarize(r: dict, med, targets: list) -> None:
    for key in ("coverage", "coverage_own", "coverage_cpu", "verify", "verify_own", "verify_cpu"):
        r[f"{key}_median"] = med(r[key])
    own = r["coverage_own_median"]
    targets.append({"target": f"coverage --html over {r['statements']} statements: ibreports time <= 3 s "
                              "(no interpreter start-up)", "value": own, "limit": 3.0, "pass": own <= 3.0})
    own = r["verify_own_median"]
    targets.append({"target": f"verify over {r['statements']} statements: ibreports time <= 5 s (no interpreter start-up)",
                    "value": own, "limit": 5.0, "pass": own <= 5.0})
    calls = r["coverage_calls"]
    per_object = sum(v for k, v in calls.items() if not k.endswith(".inventory"))
    # One listing of the whole archive; the only reads are of the newest run record (populate writes one).
    targets.append({"target": "coverage: one archive listing; reads only the newest run record, none per statement",
                    "value": per_object, "limit": 1,
                    "pass": per_object <= 1 and calls.get("LocalArchive.inventory") == 1})


def lines(r: dict) -> list[str]:
    return [f"## Coverage and verify over {r['statements']} statements", "",
            "| command | whole subprocess | ibreports time (no interpreter start-up) | CPU (user + system) |",
            "|---|---|---|---|",
            f"| `ibreports coverage --json --html FILE` (archive + sshd listing) | {r['coverage_median']:.2f} s | "
            f"{r['coverage_own_median']:.2f} s | {r['coverage_cpu_median']:.2f} s |",
            f"| `ibreports verify --json` (re-reads every object) | {r['verify_median']:.2f} s | "
            f"{r['verify_own_median']:.2f} s | {r['verify_cpu_median']:.2f} s |",
            "", f"{ACCOUNTS} accounts x {DAYS} NYSE business days of DailyActivity, {r['gaps']} days missing (their files "
            f"still on the server: every gap found and marked on-server). Archive calls of one coverage run: "
            f"{r['coverage_calls']}. Calendar page {r['html_bytes'] / 1e6:.1f} MB. "
            f"verify peak RSS {r['verify_peak_rss_mb']:.0f} MB.", ""]
