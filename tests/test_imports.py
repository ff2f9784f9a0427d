"""Imports run one way: no cycle among the modules of ibreports/ and flows/; the library and every
command but `demo` import no Prefect and no flows; the installed command is the library's CLI."""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import ibreports
from ibreports.cli import main
from tests.configs import sftp_toml
from tests.helpers import local_archive, write_config

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("ibreports", "flows")


# -- the module import graph -------------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports.

    Counted: every ``import`` and ``from ... import`` statement anywhere in the module (module
    level, under ``if TYPE_CHECKING:``, and inside functions: a lazy import is still a dependency).
    ``from pkg import name`` counts ``pkg.name`` when that is a module, else ``pkg``. Not counted:
    the parent packages Python runs first (every submodule would form a cycle with its package's
    re-exports) and ``importlib.import_module`` with a computed name (the registry's built-in kinds,
    the CLI's command modules).
    """
    modules = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                subs = [f"{base}.{alias.name}" for alias in node.names]
                targets = [t for t in subs if t in modules] or [base]
                if len(targets) < len(subs) and targets != [base]:
                    targets.append(base)  # some names are the package's own, not submodules
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_every_kind_of_import_it_counts():
    """The checker itself: module-level, TYPE_CHECKING, function-level and relative imports all count."""
    graph = import_graph()
    assert "ibreports.errors" in graph["ibreports.configmodel"]  # module level, relative
    assert "ibreports.doctor.checklist" in graph["ibreports.remote.registry"]  # under TYPE_CHECKING
    assert "ibreports.remote.registry" in graph["ibreports.remote"]  # inside open_remote
    assert "ibreports.archive.s3" in graph["ibreports.archive"]  # `from .s3 import S3Archive` in a function
    assert "ibreports.pgp.signatures" in graph["ibreports.pgp.decrypt"]  # `from . import signatures`
    assert "flows.demo" in graph["ibreports.cli.ops"]  # the demo's lazy import of its flow runner
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_library_or_the_flows():
    found = cycles(import_graph())
    assert not found, "import cycles (each: the modules that import one another round): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_the_doctor_results_and_the_remote_protocol_are_leaves():
    """What the registry names in a kind's type imports nothing that leads back to the registry."""
    graph = import_graph()
    assert graph["ibreports.doctor.checklist"] == {"ibreports.errors"}
    assert graph["ibreports.remote.protocol"] == set()
    assert graph["ibreports.archive.objects"] == {"ibreports.errors"}


# -- Prefect: only the demo ---------------------------------------------------------------------

def test_no_library_module_imports_prefect_or_the_flows():
    modules = sorted(m.name for m in pkgutil.walk_packages(ibreports.__path__, "ibreports.")
                     if not m.name.endswith(".__main__"))  # importing that one runs the command
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


def test_the_installed_command_is_the_library_cli():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"ibreports": "ibreports.cli:run"}
    script = Path(sys.executable).with_name("ibreports").read_text()
    assert "from ibreports.cli import run" in script  # the installed venv has the same entry point
    done = subprocess.run([sys.executable, "-m", "ibreports.cli", "--version"], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == f"ibreports {ibreports.__version__}", done.stderr


def _imported(stderr: str) -> list[str]:
    """Module names from ``python -X importtime`` lines (``import time: self | cumulative | name``)."""
    names = [line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")]
    return [n for n in names if n != "package"]  # the header line


def _command(args: list[str], home: Path) -> tuple[int, str, list[str]]:
    """Run the installed `ibreports` with ``args`` under -X importtime: (exit code, output, prefect modules)."""
    env = {**os.environ, "HOME": str(home)}
    env.pop("PREFECT_HOME", None)  # were Prefect imported, it would write ~/.prefect (under HOME)
    done = subprocess.run([sys.executable, "-X", "importtime", str(Path(sys.executable).with_name("ibreports")),
                           *args], capture_output=True, text=True, timeout=300, env=env, cwd=home)
    modules = _imported(done.stderr)
    assert "ibreports.cli" in modules, done.stderr[-2000:]  # importtime saw the run
    output = done.stdout + "\n".join(l for l in done.stderr.splitlines() if not l.startswith("import time:"))
    return done.returncode, output, [m for m in modules if m == "prefect" or m.startswith(("prefect.", "flows"))]


def test_no_command_but_demo_imports_prefect(tmp_path, sftp_setup, sftp_client_key, pgp_key, monkeypatch):
    """Each command run for real, to its end, through the installed entry point: not one Prefect module."""
    server, known_hosts, delivered = sftp_setup
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("IBREPORTS_KEY_PASSPHRASE", "a passphrase for the keygen run")
    runs = {
        "--help": (["--help"], {0}),
        "status --help": (["status", "--help"], {0}),
        "fetch": (["--config", str(cfg), "fetch"], {0}),
        "status": (["--config", str(cfg), "status"], {0}),
        "coverage": (["--config", str(cfg), "coverage"], {0, 1}),  # gaps between the seeded dates: 1
        "verify": (["--config", str(cfg), "verify"], {0}),
        "doctor": (["--config", str(cfg), "doctor"], {0}),
        "keygen": (["keygen", "--dir", str(tmp_path / "keys"), "--rsa-bits", "2048", "--pgp-bits", "2048"], {0}),
    }
    said = {}
    for label, (args, codes) in runs.items():
        code, output, prefect = _command(args, home)
        assert code in codes, (label, output[-3000:])
        assert prefect == [], (label, prefect[:10])
        said[label] = output
    assert list((root / "statements").rglob("*.xml"))  # fetch really archived
    assert "ibkr-sftp" in said["status"] and "ibkr-sftp" in said["doctor"]
    assert (tmp_path / "keys" / "ibkr_pgp_public.asc").exists()
    assert not (home / ".prefect").exists()  # no telemetry file, no profile


def test_demo_imports_the_flow_runner_only_when_it_runs(tmp_path):
    """`demo` without a runner given takes flows.demo's; `demo --help` imports no flow."""
    home = tmp_path / "home"
    home.mkdir()
    code, _, prefect = _command(["demo", "--help"], home)
    assert code == 0 and prefect == []
    code = ("import sys\nimport flows.demo\nflows.demo.run_flow = lambda f, c: print('RUNNER', f, c)\n"
            "from ibreports.cli import main\nsys.exit(main(['demo', '--dir', sys.argv[1]]))\n")
    folder = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert f"RUNNER {folder} {folder / 'ibreports.toml'}" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 1  # this runner archived nothing, and the demo says so


def test_every_settings_module_imports_first_without_a_cycle():
    """config -> configparse -> configmodel, secrets, remote.registry: each one importable on its own, first."""
    for module in ("ibreports.secrets", "ibreports.configmodel", "ibreports.configparse", "ibreports.config",
                   "ibreports.remote.registry", "ibreports.remote.sftpkind", "ibreports.remote",
                   "ibreports.doctor.checklist", "ibreports.archive.objects", "ibreports.archive.local"):
        code = f"import {module}\nfrom ibreports.remote.registry import known_kinds\nprint(known_kinds())"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode == 0 and "'sftp', 'ftp'" in done.stdout, (module, done.stderr)
    source = (REPO / "ibreports" / "configparse.py").read_text() + (REPO / "ibreports" / "secrets.py").read_text()
    assert "from .config import" not in source  # the model and the secrets never import the facade back
