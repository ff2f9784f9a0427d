"""Benchmark: splitting a large multi-account Flex XML answer into statements (issue 23).

Writes a Flex answer of ``--mb`` MB (default 500) holding 20 accounts' statements, then splits it
with ibreports' streaming splitter in a subprocess and records that subprocess's peak RSS
(``VmHWM``) against the file's size. The same is done with the ElementTree splitter it
replaced, on a smaller answer (``--tree-mb``, default 50), for the comparison. Runs on its own
(``python benchmarks/flexsplit_bench.py``) or from run.py (``--only flexsplit``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ACCOUNTS = 20
MB = 1 << 20
ROW = ('<Trade accountId="{a}" currency="USD" symbol="AAPL" description="APPLE INC &amp; CO" conid="265598" '
       'tradeDate="20261102" quantity="{n}" tradePrice="190.5" ibCommission="-1.00" buySell="BUY" />\n')

CHILD = r'''
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
source, staging, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
start = time.perf_counter()
if mode == "baseline":  # the interpreter and the module, nothing parsed
    from ibreports.remote.flexweb.xmlsplit import split_xml
    pieces = []
elif mode == "stream":
    from ibreports.remote.flexweb.xmlsplit import split_xml
    pieces = [p.name for p in split_xml(source, "DailyActivity", "benchmark", staging)]
else:  # the ElementTree splitter the streaming one replaced
    from tests.fixtures.treesplit import tree_split
    pieces = []
    for account, data in tree_split(source):
        (staging / (account + ".xml")).write_bytes(data)
        pieces.append(account)
# VmHWM, this process's own peak: ru_maxrss would carry over the spawning parent's peak (vfork + exec).
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"pieces": len(pieces), "seconds": time.perf_counter() - start, "peak_rss_kb": hwm}))
'''


def write_answer(path: Path, total_mb: int) -> int:
    """A FlexQueryResponse of about ``total_mb`` MB, ACCOUNTS statements of equal size."""
    per_account = total_mb * MB // ACCOUNTS
    with open(path, "w", encoding="utf-8") as out:
        out.write('<?xml version="1.0" encoding="UTF-8"?>\n<FlexQueryResponse queryName="DailyActivity" type="AF">\n'
                  f'<FlexStatements count="{ACCOUNTS}">\n')
        for i in range(ACCOUNTS):
            account = f"U{7100000 + i}"
            out.write(f'<FlexStatement accountId="{account}" fromDate="20261102" toDate="20261102" '
                      f'period="LastBusinessDay" whenGenerated="20261103;010203">\n<Trades>\n')
            block = "".join(ROW.format(a=account, n=n) for n in range(1000))
            for _ in range(max(1, -(-per_account // len(block)))):
                out.write(block)
            out.write("</Trades>\n</FlexStatement>\n")
        out.write("</FlexStatements>\n</FlexQueryResponse>\n")
    return path.stat().st_size


def measure(source: Path, staging: Path, mode: str) -> dict:
    staging.mkdir(exist_ok=True)
    done = subprocess.run([sys.executable, "-c", CHILD, str(source), str(staging), mode, str(HERE.parent)],
                          capture_output=True, text=True, check=True, timeout=3600)
    out = json.loads(done.stdout)
    size = source.stat().st_size
    shutil.rmtree(staging)
    return {"mode": mode, "file_mb": round(size / MB, 1), "statement_mb": round(size / MB / ACCOUNTS, 1), "pieces": out["pieces"],
            "seconds": round(out["seconds"], 1), "peak_rss_mb": round(out["peak_rss_kb"] / 1024, 1),
            "rss_over_size": round(out["peak_rss_kb"] * 1024 / size, 4) if size else None}


def flexsplit_workload(work: Path, log, mb: int = 500, tree_mb: int = 50) -> dict:
    folder = work / "flexsplit"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        res = {}
        empty = folder / "empty.xml"
        empty.write_text("")
        res["baseline"] = measure(empty, folder / "out-baseline", "baseline")
        empty.unlink()
        log(f"flexsplit: writing a {tree_mb} MB answer; the ElementTree split, for comparison")
        small = folder / "small.xml"
        write_answer(small, tree_mb)
        res["tree"] = measure(small, folder / "out-tree", "tree")
        res["stream_small"] = measure(small, folder / "out-stream-small", "stream")
        small.unlink()
        log(f"flexsplit: writing a {mb} MB answer of {ACCOUNTS} accounts; the streaming split")
        big = folder / "big.xml"
        write_answer(big, mb)
        res["stream"] = measure(big, folder / "out-stream", "stream")
        return res
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def summarize(res: dict, targets: list) -> None:
    base = res["baseline"]["peak_rss_mb"]
    for key in ("tree", "stream_small", "stream"):  # what parsing added, per MB of one statement
        r = res[key]
        r["above_baseline_mb"] = round(r["peak_rss_mb"] - base, 1)
        r["above_baseline_over_statement"] = round(r["above_baseline_mb"] / r["statement_mb"], 2)
    ratio = res["stream"]["rss_over_size"]
    targets.append({"target": f"flexsplit: peak RSS / file size on {res['stream']['file_mb']:.0f} MB <= 0.1",
                    "value": ratio, "limit": 0.1, "pass": ratio <= 0.1})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=500)
    p.add_argument("--tree-mb", type=int, default=50)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ibr-flexsplit-"))
    try:
        res = flexsplit_workload(work, lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr),
                                 args.mb, args.tree_mb)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    targets: list = []
    summarize(res, targets)
    print(json.dumps({"flexsplit": res, "targets": targets}, indent=2))
    return 0 if all(t["pass"] for t in targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
