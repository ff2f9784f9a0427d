"""Imports run one way: the library and its CLI import no Prefect and no flows; the flows bring the runner."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import ibreports
from ibreports.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_no_library_module_imports_prefect_or_the_flows():
    modules = sorted(m.name for m in pkgutil.walk_packages(ibreports.__path__, "ibreports."))
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "from ibreports.cli import build_parser\n"
        "build_parser()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('prefect', 'flows')}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert "ibreports.cli.ops" in modules and "ibreports.configparse" in modules


def test_the_installed_command_brings_the_flow_runner():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ibreports"] == "flows.cli:run"
    from flows.cli import run  # noqa: F401 - the entry point resolves
    from flows.demo import run_flow  # noqa: F401


def test_demo_without_a_flow_runner_says_which_command_to_run(tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "no flow runner" in err and "flows.cli:run" in err
    assert not (tmp_path / "demo").exists()  # refused before anything was made


def test_the_flow_runner_given_to_main_is_the_one_the_demo_runs(tmp_path):
    folder = tmp_path / "demo"
    code = ("import sys\nfrom ibreports.cli import main\n"
            "sys.exit(main(['demo', '--dir', sys.argv[1]], flow_runner=lambda f, c: print('RUNNER', f, c)))\n")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert f"RUNNER {folder} {folder / 'ibreports.toml'}" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 1  # this runner archived nothing, and the demo says so


def test_every_settings_module_imports_first_without_a_cycle():
    """config -> configparse -> configmodel, secrets, remote.registry: each one importable on its own, first."""
    for module in ("ibreports.secrets", "ibreports.configmodel", "ibreports.configparse", "ibreports.config",
                   "ibreports.remote.registry", "ibreports.remote.sftpkind", "ibreports.remote"):
        code = f"import {module}\nfrom ibreports.remote.registry import known_kinds\nprint(known_kinds())"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode == 0 and "'sftp', 'ftp'" in done.stdout, (module, done.stderr)
    source = (REPO / "ibreports" / "configparse.py").read_text() + (REPO / "ibreports" / "secrets.py").read_text()
    assert "from .config import" not in source  # the model and the secrets never import the facade back
