"""Benchmark: start-up of the installed ``ibreports`` command against a bare interpreter (issue 24).

``python benchmarks/cli_startup.py [--runs 15]`` times, in fresh processes and interleaved:
``python -c pass``, ``ibreports --help``, ``ibreports status --help``, ``ibreports doctor --help``
and, for comparison, ``python -c "import flows"`` (what every command paid when the entry point
brought the flows: Prefect's settings). Prints medians and module counts (``-X importtime``)
and writes benchmarks/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
CLI = str(Path(PYTHON).with_name("ibreports"))
CASES = {
    "python -c pass": [PYTHON, "-c", "pass"],
    "ibreports --help": [PYTHON, CLI, "--help"],
    "ibreports status --help": [PYTHON, CLI, "status", "--help"],
    "ibreports doctor --help": [PYTHON, CLI, "doctor", "--help"],
    "python -c 'import flows' (the old entry point's cost)": [PYTHON, "-c", "import flows"],
}


def run_once(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def modules(cmd: list[str], env: dict[str, str]) -> tuple[int, int]:
    """(modules imported, of which prefect's) in one run, from -X importtime."""
    done = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], env=env, cwd=HERE.parent, capture_output=True,
                          text=True, check=True)
    names = [line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    names = names[1:]  # the header
    return len(names), sum(1 for n in names if n == "prefect" or n.startswith("prefect."))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="ibreports-startup-")
    env = {**os.environ, "HOME": home, "PREFECT_HOME": os.path.join(home, ".prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for cmd in CASES.values():  # warm the page cache and the .pyc files
        run_once(cmd, env)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.runs):
        for name, cmd in CASES.items():
            times[name].append(run_once(cmd, env))
    base = statistics.median(times["python -c pass"])
    rows = []
    for name, cmd in CASES.items():
        median = statistics.median(times[name])
        count, prefect = modules(cmd, env)
        rows.append({"command": name, "median_s": round(median, 3), "min_s": round(min(times[name]), 3),
                     "over_bare_python_s": round(median - base, 3), "modules": count, "prefect_modules": prefect})
    print(f"{'command':<55} {'median':>8} {'min':>8} {'+ over python':>14} {'modules':>8} {'prefect':>8}")
    for r in rows:
        print(f"{r['command']:<55} {r['median_s']:>7.3f}s {r['min_s']:>7.3f}s {r['over_bare_python_s']:>13.3f}s "
              f"{r['modules']:>8} {r['prefect_modules']:>8}")
    out = HERE / "results" / "cli_startup.json"
    out.write_text(json.dumps({"runs": args.runs, "python": sys.version.split()[0], "rows": rows}, indent=1) + "\n")
    print(f"written: {out.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
