"""The benchmark table (stdout) and the results files (results.json, results.md)."""

from __future__ import annotations

import json
from pathlib import Path


def _s(value) -> str:
    return "-" if value is None else f"{value:.2f} s"


def lines(results: dict) -> list[str]:
    """The results as Markdown: machine, medians, ratios, targets."""
    m, w = results["machine"], results["workloads"]
    out = [f"# ibreports benchmarks ({results['mode']} run, median of {results['runs']})", "",
           f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gb']} GB RAM, Linux {m['kernel']}, Python {m['python']}, "
           f"{m['gpg']}, {m['openssh']}, paramiko {m['paramiko']}, boto3 {m['boto3']}, moto {m['moto']}; {m['date']}.",
           "Everything on loopback: OpenSSH sshd, moto S3 over HTTP, the real gpg. Keys from `ibreports keygen` "
           "(RSA-4096, the PGP secret key under gpg's default protection).", ""]
    for name, title in (("small", "Small files"), ("bulk", "Bulk")):
        if name not in w:
            continue
        r = w[name]
        out += [f"## {title}: {r['files']} files, {r['bytes'] / 1e6:.0f} MB encrypted", "",
                "| measurement | median | vs (b) |", "|---|---|---|",
                f"| (a) OpenSSH `sftp -b` download alone | {_s(r['a_median'])} | {r['a_median'] / r['b_median']:.3f} |",
                f"| (b) hand-written script (sftp -b, gpg -d per file, cp) | {_s(r['b_median'])} | 1 |",
                f"| (c) `ibreports fetch` -> local archive (whole subprocess) | {_s(r['c_median'])} | {r['c_over_b']:.3f} |",
                f"| (c) ibreports time without interpreter start-up | {_s(r['c_own_median'])} | |"]
        if r.get("d_median"):
            out += [f"| (d) `ibreports fetch` -> S3 (moto over HTTP) | {_s(r['d_median'])} | {r['d_over_b']:.3f} |"]
        out += ["", f"(c) / (a) = {r['c_over_a']:.2f}. ibreports also archives the encrypted original, checks sizes and "
                    f"SHA-256 and writes a run record; the script only decrypts and copies."]
        if r.get("b_sample"):
            out += [f"(b) is an estimate: the script ran on a random sample of {r['b_sample']} files "
                    f"(median {r['b_sample_s_median']:.2f} s); its per-file decrypt+copy time was scaled to all "
                    f"{r['files']} files and added to (a), the measured download of all of them. "
                    "Run with `--full` to time the script on every file."]
        phases = r["b_phases"][len(r["b_phases"]) // 2]
        out += [f"Script phases (one run): download {phases['download']:.2f} s, gpg -d {phases['decrypt']:.2f} s, "
                f"cp {phases['copy']:.2f} s. Plaintexts from the script and from ibreports compared byte for byte: "
                f"{r['checked_plaintexts']} files.", ""]
    if "rerun" in w:
        r = w["rerun"]
        out += [f"## Re-run with nothing new over {r['files']} archived files", "",
                "| archive | whole subprocess | ibreports time (no interpreter start-up) | pipeline.fetch alone |",
                "|---|---|---|---|",
                f"| local | {_s(r['local_median'])} | {_s(r['local_own_median'])} | {_s(r['local_fetch_median'])} |"]
        if r.get("s3_median"):
            out += [f"| S3 | {_s(r['s3_median'])} | {_s(r['s3_own_median'])} | {_s(r['s3_fetch_median'])} |"]
        out += ["", f"Local archive calls in one re-run: {r['local_calls']} (one inventory walk, no per-file access)."]
        if r.get("s3_requests"):
            out += [f"S3 requests seen by the server in one re-run, over {r['s3_objects']} objects: {r['s3_requests']} "
                    f"(ListObjectsV2 pages of 1,000; the PUT is the run record). The same listing made directly with "
                    f"boto3 from the benchmark process takes {r['s3_bare_listing_s']:.2f} s: that part is moto's."]
        if r.get("first_fetch_s"):
            out += [f"The first fetch that populated the archive ({r['files']} files, local): {r['first_fetch_s']:.1f} s."]
        else:
            out += ["(--quick: the archive was filled directly at the keys ibreports computes; the re-run asserts all "
                    f"{r['files']} files were found already archived.)"]
        out += [""]
    if "memory" in w:
        r = w["memory"]
        p = r["polled_peak_mb"]
        out += [f"## Peak memory on one {r['bytes'] / 2**30:.2f} GiB file", "",
                f"ibreports process peak RSS {r['peak_rss_mb']:.0f} MB (VmHWM); polled every 50 ms: ibreports "
                f"{p['ibreports']:.0f} MB, its children (gpg) "
                f"{p['children']:.0f} MB, gpg-agents {p['gpg_agents']:.0f} MB, sum {p['total']:.0f} MB. "
                f"Fetch took {r['wall_s']:.1f} s. (getrusage's ru_maxrss is not used: after vfork+exec Linux "
                "carries the parent's peak into the child's, so it reports the spawner's size.)", ""]
    if "flow" in w:
        r = w["flow"]
        out += ["## Prefect flow (issue 4)", "",
                f"`retrieve-statements` over the same {w.get('small', {}).get('files', '')} small files: "
                f"{_s(r['flow_median'])} for the whole subprocess (ephemeral API server start included), "
                f"{_s(r['flow_own_median'])} for the flow call; plain `ibreports fetch`: {_s(r['fetch_median'])}.", ""]
    if "coverage" in w:
        from coverage_bench import lines as coverage_lines

        out += coverage_lines(w["coverage"])
    out += ["## Targets", "", "| target | value | limit | result |", "|---|---|---|---|"]
    out += [f"| {t['target']} | {t['value']} | {t['limit']} | {'PASS' if t['pass'] else 'FAIL'} |" for t in results["targets"]]
    out += ["", f"Whole benchmark: {results['elapsed_s']:.0f} s (workload generation {results.get('generation_s')})."]
    return out


def print_table(results: dict) -> None:
    print("\n".join(lines(results)))


def write_results(results: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (folder / "results.md").write_text("\n".join(lines(results)) + "\n")
