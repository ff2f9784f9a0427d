"""The installed ``ibreports`` command: the library's CLI, with the Prefect flow runner plugged in.

``ibreports.cli`` stays free of Prefect; this entry point is where the two meet.
"""

from __future__ import annotations

import sys

from ibreports.cli import main


def run() -> None:
    from flows.demo import run_flow  # light: Prefect itself is imported only when the demo runs

    sys.exit(main(flow_runner=run_flow))


if __name__ == "__main__":
    run()
