"""Scale-out, the real thing: `make deploy PULL=from-git` against a real `prefect server start`,
and a process worker on a Python that has the dependencies but no ibreports, started in an empty
folder. Only the deployment's git_clone pull step can bring it the code: it clones a bare
repository holding the current tree and completes a daily run against a real sshd and gpg.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.configs import sftp_toml
from tests.helpers import PLAIN, archived_files, run_id_of, seed, write_config
from tests.prefect_harness import REPO, PrefectStack

BRANCH = "release"  # not the bare repository's default branch: the branch setting must count


def _git(*args: str, cwd: Path) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd),
           "PATH": "/usr/local/bin:/usr/bin:/bin"}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def bare_repository_of_this_tree(tmp: Path) -> Path:
    """A bare repository whose branch BRANCH is the worktree as it is now (tracked and new files,
    .gitignore honoured), and whose default branch holds no code."""
    src = tmp / "src"
    src.mkdir()
    _git("init", "-q", "-b", "main", cwd=src)
    (src / "README.md").write_text("nothing to run here\n")
    _git("add", "-A", cwd=src)
    _git("commit", "-q", "-m", "default branch", cwd=src)
    _git("checkout", "-q", "-b", BRANCH, cwd=src)
    (src / "README.md").unlink()
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO)
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # a tracked file deleted in the worktree is left out
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    _git("add", "-A", cwd=src)
    _git("commit", "-q", "-m", "the tree under test", cwd=src)
    _git("checkout", "-q", "main", cwd=src)
    bare = tmp / "ibreports.git"
    _git("clone", "-q", "--bare", str(src), str(bare), cwd=tmp)
    return bare


def python_without_ibreports(tmp: Path) -> Path:
    """A virtualenv that sees this one's packages (prefect, paramiko, ...) but not ibreports or flows.

    The .pth line adds the site-packages folder as a plain path, so the editable install's own
    .pth (which would point at this worktree) is not processed."""
    venv = tmp / "worker-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    Path(site, "ibreports-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = PrefectStack(tmp_path_factory.mktemp("prefect-home"))
    stack.env.pop("IBREPORTS_HOME", None)
    stack.env.pop("PYTHONPATH", None)
    try:
        stack.start_server()
        stack.cli("work-pool", "create", "ibreports", "--type", "process")
        yield stack
    finally:
        stack.stop()


@pytest.mark.timeout(900)  # includes the module's server start
def test_a_worker_with_no_copy_of_the_project_clones_it_and_completes_a_daily_run(
        stack, tmp_path, sshd_factory, sftp_client_key, pgp_key):
    bare = bare_repository_of_this_tree(tmp_path)
    python = python_without_ibreports(tmp_path)
    elsewhere = tmp_path / "worker-cwd"
    elsewhere.mkdir()
    probe = subprocess.run([str(python), "-c", "import prefect, paramiko, gnupg, boto3\nimport ibreports"],
                           cwd=elsewhere, env=stack.env, capture_output=True, text=True, timeout=120)
    assert "No module named 'ibreports'" in probe.stderr, probe.stderr  # the dependencies, not the project

    server = sshd_factory([sftp_client_key[1]])
    delivered = seed(server.root / "outgoing", pgp_key.public_file)
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key,
                       f'[archive]\nurl = "{tmp_path / "archive"}"\n')
    stack.env.update(IBREPORTS_CONFIG=str(cfg), TEST_PGP_PASSPHRASE=pgp_key.passphrase,
                     TEST_SSH_PASSPHRASE=sftp_client_key[2])

    # Exactly as docs/scale-out.md says; -o: the test's own virtualenv is not reinstalled.
    deploy_env = dict(stack.env, IBREPORTS_GIT_URL=bare.as_uri(), IBREPORTS_GIT_BRANCH=BRANCH)
    done = subprocess.run(["make", "-o", ".venv/.installed", "deploy", "PULL=from-git"], cwd=REPO, env=deploy_env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    daily = stack.get("/deployments/name/retrieve-statements/daily")
    assert daily["pull_steps"] == [{"prefect.deployments.steps.git_clone": {
        "id": "clone", "repository": bare.as_uri(), "branch": BRANCH}}]

    stack.spawn("worker", "worker", "start", "--pool", "ibreports", "--name", "git-worker", cwd=elsewhere,
                program=[str(python), "-m", "prefect"])
    run_id = run_id_of(stack.cli("deployment", "run", "retrieve-statements/daily"))
    run = stack.wait_flow_run(run_id, timeout=300)

    assert run["state_type"] == "COMPLETED", f"{run['state']}\n{stack.log('worker')}"
    files = archived_files(tmp_path / "archive")
    for name, data in PLAIN.items():
        day = name.split(".")[3]
        assert files[f"statements/{name.split('.')[0]}/{day[:4]}/{day[4:6]}/{name}"] == data
    assert len(files) == len(PLAIN) * 2 + 1 == len(delivered) + len(PLAIN)  # decrypted + originals + plain
    # The code came from the clone of the bare repository's branch (the worker's Python has none).
    logs = stack.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
    messages = "\n".join(entry["message"] for entry in logs)
    assert "Executing deployment step: git_clone" in messages, messages
