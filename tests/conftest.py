"""Shared test set-up: real servers on loopback, isolated from the user's environment."""

import os
import tempfile

# No network, no user state: Prefect gets a throwaway home before anything imports it.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="ibreports-prefect-"))
os.environ.pop("IBREPORTS_CONFIG", None)

pytest_plugins = [
    "tests.fixtures.sshd",
    "tests.fixtures.ftp",
    "tests.fixtures.s3",
    "tests.fixtures.pgpkeys",
    "tests.fixtures.deliveries",
    "tests.fixtures.flexweb",
]
