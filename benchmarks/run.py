"""ibreports benchmarks (issue 7): ``python benchmarks/run.py [--quick] [--only small,bulk,rerun,memory,s3,flow,coverage,flexsplit]``.

Builds the workload on a real OpenSSH sshd (keys made on the spot by ``ibreports keygen``),
measures OpenSSH sftp (a), the hand-written script (b), ibreports to a local archive (c) and
to S3 over HTTP (d), a re-run over 10,000 archived files (e), peak RSS on a 1 GB file (f) and
``coverage``/``verify`` over 10,000 archived statements (coverage_bench.py), then prints medians, ratios and PASS/FAIL and writes benchmarks/results/results.{json,md}.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import infra  # noqa: E402
import coverage_bench  # noqa: E402
import flexsplit_bench  # noqa: E402
import workload  # noqa: E402
from report import print_table, write_results  # noqa: E402
from scenarios import Bench, same_plaintexts  # noqa: E402

SIZES = {
    "full": {"small": 2000, "sample": 200, "bulk": (3, 200 * workload.MB), "rerun": 10_000, "memory": 1024 * workload.MB},
    "quick": {"small": 300, "sample": 30, "bulk": (3, 50 * workload.MB), "rerun": 10_000, "memory": 1024 * workload.MB},
}
ALL = ("small", "bulk", "rerun", "memory", "s3", "flow", "coverage", "flexsplit")


def med(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def transfer_workload(b: Bench, name: str, runs: int, s3: bool, sample: int | None, full_script: bool) -> dict:
    """(a), (b), (c) and optionally (d) on one folder of files, interleaved, ``runs`` times."""
    remote = b.remote(name)
    names = sorted(p.name for p in remote.iterdir())
    rng = random.Random(7)
    picked = None if full_script or sample is None or sample >= len(names) else sorted(rng.sample(names, sample))
    res: dict = {"files": len(names), "bytes": sum(p.stat().st_size for p in remote.iterdir()),
                 "a": [], "b": [], "b_phases": [], "c": [], "c_own": [], "d": [], "d_own": []}
    if picked:
        res["b_sample"] = len(picked)
    bucket = b.s3.new_bucket(f"bench-{name}") if s3 else None
    for i in range(runs):
        log(f"{name} run {i + 1}/{runs}: (a) sftp -b")
        res["a"].append(b.openssh(remote))
        log(f"{name} run {i + 1}/{runs}: (b) hand-written script" + (f" on {len(picked)} sampled files" if picked else ""))
        seconds, phases, script_out = b.handwritten(remote, picked)
        res["b_phases"].append(phases)
        if picked:  # the sample's decrypt + copy, scaled per file, on top of the full download (a)
            per_file = (phases["decrypt"] + phases["copy"]) / len(picked)
            res["b"].append(res["a"][-1] + per_file * len(names))
            res.setdefault("b_sample_s", []).append(seconds)
        else:
            res["b"].append(seconds)
        log(f"{name} run {i + 1}/{runs}: (c) ibreports fetch -> local archive")
        archive = b.fresh(f"archive-{name}")
        out = b.fetch(b.config(remote, str(archive)))
        assert out["outcomes"]["archived"] == len(names), out
        res["c"].append(out["wall_s"])
        res["c_own"].append(out["ibreports_s"])
        res["checked_plaintexts"] = same_plaintexts(script_out, archive)
        shutil.rmtree(archive)
        shutil.rmtree(script_out)
        if bucket:
            log(f"{name} run {i + 1}/{runs}: (d) ibreports fetch -> S3 (moto over HTTP)")
            out = b.fetch(b.config(remote, f"s3://{bucket}/ib"))
            assert out["outcomes"]["archived"] == len(names), out
            res["d"].append(out["wall_s"])
            res["d_own"].append(out["ibreports_s"])
            b.s3.empty_bucket(bucket)
    return res


def rerun_workload(b: Bench, runs: int, s3: bool, by_fetch: bool) -> dict:
    """(e) nothing new over N archived files: local archive (populated by a fetch, or directly), then S3."""
    remote = b.remote("rerun")
    n = len(list(remote.iterdir()))
    archive = b.fresh("archive-rerun")
    config = b.config(remote, str(archive))
    res: dict = {"files": n, "local": [], "local_own": [], "local_fetch": []}
    if by_fetch:
        log(f"rerun: populating the local archive with a first fetch of {n} files")
        first = b.fetch(config)
        assert first["outcomes"]["archived"] == n, first
        res["first_fetch_s"] = round(first["wall_s"], 2)
    else:
        log(f"rerun: populating the local archive directly at ibreports' keys ({n} files)")
        workload.populate_archive(archive, remote, b.work / "rerun-plain", "bench")
    for i in range(runs):
        log(f"rerun run {i + 1}/{runs}: local")
        out = b.fetch(config)
        assert out["outcomes"]["already-archived"] == n and out["outcomes"]["archived"] == 0, out
        res["local"].append(out["wall_s"])
        res["local_own"].append(out["ibreports_s"])
        res["local_fetch"].append(out["fetch_s"])
        res["local_calls"] = out["calls"]
    if s3:
        bucket = b.s3.new_bucket("bench-rerun")
        log("rerun: copying the local archive into S3 (not timed)")
        objects = _copy_to_s3(b, archive, bucket)
        res.update(s3=[], s3_own=[], s3_fetch=[], s3_objects=objects)
        for i in range(runs):
            log(f"rerun run {i + 1}/{runs}: S3")
            b.s3.counts.clear()
            out = b.fetch(b.config(remote, f"s3://{bucket}/ib"))
            assert out["outcomes"]["already-archived"] == n and out["outcomes"]["archived"] == 0, out
            res["s3"].append(out["wall_s"])
            res["s3_own"].append(out["ibreports_s"])
            res["s3_fetch"].append(out["fetch_s"])
            res["s3_requests"] = dict(b.s3.counts)
        start = time.perf_counter()  # the same listing from the bench process: what moto itself costs
        listed = sum(len(page.get("Contents", [])) for page in
                     b.s3.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="ib/"))
        res["s3_bare_listing_s"] = round(time.perf_counter() - start, 2)
        assert listed >= objects
        b.s3.empty_bucket(bucket)
    shutil.rmtree(archive)
    return res


def _copy_to_s3(b: Bench, archive: Path, bucket: str) -> int:
    from concurrent.futures import ThreadPoolExecutor

    files = [p for p in archive.rglob("*") if p.is_file() and not p.relative_to(archive).parts[0] == "runs"]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: b.s3.client.put_object(Bucket=bucket, Key="ib/" + p.relative_to(archive).as_posix(),
                                                      Body=p.read_bytes()), files))
    return len(files)


def memory_workload(b: Bench) -> dict:
    """(f) peak RSS of ``ibreports fetch`` on one 1 GB file (local archive)."""
    remote = b.remote("memory")
    archive = b.fresh("archive-memory")
    log("memory: fetching the 1 GB file with RSS polling")
    out = b.fetch(b.config(remote, str(archive)), poll_rss=True)
    assert out["outcomes"]["archived"] == 1, out
    shutil.rmtree(archive)
    return {"bytes": next(remote.iterdir()).stat().st_size, "wall_s": round(out["wall_s"], 2),
            "peak_rss_mb": round(out["peak_rss_mb"], 1), "maxrss_children_mb": round(out["maxrss_children_mb"], 1),
            "polled_peak_mb": out["polled_rss_mb"]}


def flow_workload(b: Bench, runs: int) -> dict:
    """Issue 4: the retrieve-statements flow vs plain fetch, same small files, local archive."""
    remote = b.remote("small")
    res: dict = {"flow": [], "flow_own": [], "fetch": []}
    for i in range(runs):
        log(f"flow run {i + 1}/{runs}: retrieve-statements (ephemeral Prefect server)")
        out = b.flow(b.config(b.remote("small"), str(b.fresh("archive-flow"))))
        res["flow"].append(out["wall_s"])
        res["flow_own"].append(out["flow_s"])
        log(f"flow run {i + 1}/{runs}: plain ibreports fetch")
        plain = b.fetch(b.config(remote, str(b.fresh("archive-flow"))))
        res["fetch"].append(plain["wall_s"])
    shutil.rmtree(b.work / "archive-flow", ignore_errors=True)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 run, smaller workloads (CI)")
    p.add_argument("--runs", type=int, help="runs per measurement (default 3, --quick 1)")
    p.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    p.add_argument("--full", action="store_true", help="run the hand-written script on every file (no sampling)")
    p.add_argument("--work", type=Path, help="work folder (default: a temporary folder, removed afterwards)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    if only - set(ALL):
        p.error(f"unknown --only item(s): {', '.join(sorted(only - set(ALL)))}")
    mode = "quick" if args.quick else "full"
    size, runs = SIZES[mode], args.runs or (1 if args.quick else 3)
    work = args.work or Path(tempfile.mkdtemp(prefix="ibr-bench-"))
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"mode": mode, "runs": runs, "machine": infra.machine(), "workloads": {}}
    from tests.fixtures.sshd import SshdServer

    log(f"work folder {work}; generating keys with ibreports keygen (RSA-4096, gpg default protection)")
    keys = workload.make_keys(work / "keys")
    sshd = SshdServer(work / "sshd", [keys.ssh_public])
    s3 = infra.CountingS3()
    try:
        script_home, passfile = workload.script_gpg_home(keys, work / "script-gnupg")
        b = Bench(work, keys, sshd, s3, script_home, passfile)
        gen: dict = {}
        if only & {"small", "flow"}:
            t = time.perf_counter()
            workload.small_files(b.remote("small"), size["small"], keys, seed=1)
            gen["small"] = round(time.perf_counter() - t, 1)
        if "small" in only:
            results["workloads"]["small"] = transfer_workload(b, "small", runs, "s3" in only, size["sample"], args.full)
        if "bulk" in only:
            t = time.perf_counter()
            workload.bulk_files(b.remote("bulk"), size["bulk"][0], size["bulk"][1], keys)
            gen["bulk"] = round(time.perf_counter() - t, 1)
            results["workloads"]["bulk"] = transfer_workload(b, "bulk", runs, "s3" in only, None, True)
            shutil.rmtree(b.remote("bulk"))
        if "rerun" in only:
            t = time.perf_counter()
            workload.small_files(b.remote("rerun"), size["rerun"], keys, seed=2, sizes=(20_000, 40_000),
                                 plain=b.work / "rerun-plain")
            gen["rerun"] = round(time.perf_counter() - t, 1)
            # --quick skips the S3 re-run: filling moto with 20,000 objects takes minutes.
            results["workloads"]["rerun"] = rerun_workload(b, runs, "s3" in only and not args.quick, by_fetch=not args.quick)
            shutil.rmtree(b.remote("rerun"))
        if "memory" in only:
            t = time.perf_counter()
            workload.bulk_files(b.remote("memory"), 1, size["memory"], keys, prefix="F7000001.Huge")
            gen["memory"] = round(time.perf_counter() - t, 1)
            results["workloads"]["memory"] = memory_workload(b)
            shutil.rmtree(b.remote("memory"))
        if "coverage" in only:
            results["workloads"]["coverage"] = coverage_bench.coverage_workload(b, runs, log)
        if "flexsplit" in only:
            results["workloads"]["flexsplit"] = flexsplit_bench.flexsplit_workload(
                work, log, mb=100 if args.quick else 500)
        if "flow" in only and (HERE.parent / "flows" / "retrieve.py").exists():
            results["workloads"]["flow"] = flow_workload(b, runs)
        results["generation_s"] = gen
    finally:
        s3.stop()
        sshd.stop()
        for home in (work / "script-gnupg", work / "gpg-public"):  # stop the agents the set-up started
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    summarize(results)
    print_table(results)
    write_results(results, args.out)
    return 0 if all(t["pass"] for t in results["targets"]) else 1


def summarize(results: dict) -> None:
    """Medians, ratios and the four targets."""
    w, targets = results["workloads"], []
    for name in ("small", "bulk"):
        if name in w:
            r = w[name]
            for key in ("a", "b", "c", "c_own", "d", "d_own", "b_sample_s"):
                if r.get(key):
                    r[f"{key}_median"] = med(r[key])
            r["c_over_b"] = round(r["c_median"] / r["b_median"], 3)
            r["c_over_a"] = round(r["c_median"] / r["a_median"], 3)
            if r.get("d_median"):
                r["d_over_b"] = round(r["d_median"] / r["b_median"], 3)
            limit = 0.5 if name == "small" else 1.0
            targets.append({"target": f"{name}: (c) <= {limit} x (b)", "value": r["c_over_b"], "limit": limit,
                            "pass": r["c_over_b"] <= limit})
    if "rerun" in w:
        r = w["rerun"]
        for key in ("local", "local_own", "local_fetch", "s3", "s3_own", "s3_fetch"):
            if r.get(key):
                r[f"{key}_median"] = med(r[key])
        worst = r["local_own_median"]
        per_file = r["local_calls"].get("LocalArchive.get", 0) + r["local_calls"].get("LocalArchive.put", 0)
        if "s3_requests" in r:
            per_file += sum(v for k, v in r["s3_requests"].items() if k in ("HEAD", "GET"))
        targets.append({"target": f"rerun over {r['files']} files, local archive: ibreports time <= 2 s (no interpreter start-up)",
                        "value": worst, "limit": 2.0, "pass": worst <= 2.0})
        targets.append({"target": "rerun: no request per archived file", "value": per_file, "limit": 0,
                        "pass": per_file == 0 and r["local_calls"].get("LocalArchive.inventory") == 1})
    if "memory" in w:
        peak = w["memory"]["peak_rss_mb"]
        targets.append({"target": "1 GB file: peak RSS of ibreports <= 200 MB", "value": peak, "limit": 200,
                        "pass": peak <= 200})
    if "coverage" in w:
        coverage_bench.summarize(w["coverage"], med, targets)
    if "flexsplit" in w:
        flexsplit_bench.summarize(w["flexsplit"], targets)
    if "flow" in w:
        r = w["flow"]
        r.update(flow_median=med(r["flow"]), flow_own_median=med(r["flow_own"]), fetch_median=med(r["fetch"]))
    results["targets"] = targets


if __name__ == "__main__":
    sys.exit(main())
