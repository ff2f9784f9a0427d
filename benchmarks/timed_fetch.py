"""Run ``ibreports <args>`` in this process and write timings, RSS and archive call counts as JSON.

usage: python benchmarks/timed_fetch.py OUT.json [ibreports arguments...]

The clock starts once the interpreter is up (before ibreports is imported), so
``ibreports_s`` is ibreports' own time without interpreter start-up; ``fetch_s`` is
pipeline.fetch alone. Archive methods are wrapped only to count calls: behaviour is unchanged.
With IBREPORTS_BENCH_PROFILE=FILE the run is profiled (cProfile) into FILE.
"""

import time

T0 = time.perf_counter()

import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402


def _count(cls: type, name: str, counts: dict) -> None:
    original = getattr(cls, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        key = f"{cls.__name__}.{name}"
        counts[key] = counts.get(key, 0) + 1
        return original(*args, **kwargs)

    setattr(cls, name, wrapper)


def _vmhwm_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return -1.0


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    import ibreports.pipeline as pipeline
    from ibreports.archive.local import LocalArchive
    from ibreports.cli import main as cli_main

    classes: list[type] = [LocalArchive]
    config = argv[argv.index("--config") + 1] if "--config" in argv else ""
    if config and "s3://" in open(config).read():  # boto3 is only imported when the archive is S3
        from ibreports.archive.s3 import S3Archive

        classes.append(S3Archive)
    counts: dict[str, int] = {}
    for cls in classes:
        for name in ("inventory", "put", "put_bytes", "get", "delete"):
            _count(cls, name, counts)
    timing: dict[str, float] = {}
    original_fetch = pipeline.fetch

    def timed_fetch(*args, **kwargs):
        start = time.perf_counter()
        try:
            report = original_fetch(*args, **kwargs)
        finally:
            timing["fetch_s"] = time.perf_counter() - start
        timing["outcomes"] = {o: report.count(o) for o in ("archived", "already-archived", "failed", "rejected")}
        return report

    pipeline.fetch = timed_fetch
    imported = time.perf_counter()
    if profile := os.environ.get("IBREPORTS_BENCH_PROFILE"):  # e.g. /tmp/rerun.prof: where the time goes
        import cProfile

        with cProfile.Profile() as prof:
            rc = cli_main(argv)
        prof.dump_stats(profile)
    else:
        rc = cli_main(argv)
    end = time.perf_counter()
    result = {
        "rc": rc,
        "ibreports_s": end - T0,
        "import_s": imported - T0,
        # VmHWM, not getrusage: after a vfork+exec Linux carries the parent's peak into ru_maxrss.
        "peak_rss_mb": _vmhwm_mb(),
        "maxrss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "calls": counts,
        **timing,
    }
    with open(out, "w") as fh:
        json.dump(result, fh)
    return rc


if __name__ == "__main__":
    sys.exit(main())
