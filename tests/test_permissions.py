"""Nothing we write is open to other local users, whatever the umask; nothing another user plants
in the archive passes for an archived statement; nothing we write follows a planted link.

Real sshd, real gpg, the real CLI (in a subprocess where the umask matters).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ibreports.cli import main
from tests.configs import sftp_toml
from tests.helpers import PLAIN, write_config

NOBODY = 65534
S1 = "statements/U1234567/2026/11/U1234567.DailyActivity.20261101.20261101.xml"
S2 = "statements/U7654321/2026/11/U7654321.DailyActivity.20261102.20261102.xml"
S3_ORIGINAL = "encrypted/ibkr-sftp/2026/11/F1234567.TradeConfirms.20261103.20261103.xml.pgp"


def _cli_under_umask_0(*args: str) -> subprocess.CompletedProcess:
    code = "import os, sys; os.umask(0); from ibreports.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def _modes(root: Path) -> tuple[set[int], set[int]]:
    folders, files = {stat.S_IMODE(root.stat().st_mode)}, set()
    for path in root.rglob("*"):
        (folders if path.is_dir() else files).add(stat.S_IMODE(path.lstat().st_mode))
    return folders, files


def test_under_umask_0_every_folder_is_0700_and_every_file_private(tmp_path, sftp_setup, sftp_client_key, pgp_key):
    server, known_hosts, delivered = sftp_setup
    staging = tmp_path / "deep" / "staging"
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key,
                       f'[archive]\nurl = "{tmp_path / "new" / "archive"}"\n\n[run]\nstaging_dir = "{staging}"\n')
    done = _cli_under_umask_0("--config", str(cfg), "fetch")
    assert done.returncode == 0, done.stderr
    root = tmp_path / "new" / "archive"
    folders, files = _modes(root)
    assert folders == {0o700}
    assert files == {0o400, 0o600}  # archived statements and originals read-only, the run record 0600
    assert {stat.S_IMODE(p.stat().st_mode) for p in (root / "runs").rglob("*.json")} == {0o600}
    assert len(list((root / "runs").rglob("*.json"))) == 1 and any((root / "encrypted").rglob("*.pgp"))
    for level in (tmp_path / "new", tmp_path / "deep", staging):  # the parents we created too
        assert stat.S_IMODE(level.stat().st_mode) == 0o700, level


def test_an_archive_and_a_staging_folder_open_to_others_are_tightened_once(tmp_path, sftp_setup,
                                                                          sftp_client_key, pgp_key):
    server, known_hosts, _ = sftp_setup
    root, staging = tmp_path / "archive", tmp_path / "staging"
    root.mkdir(mode=0o777)
    staging.mkdir(mode=0o777)
    root.chmod(0o777)
    staging.chmod(0o777)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key,
                       f'[archive]\nurl = "{root}"\n\n[run]\nstaging_dir = "{staging}"\n')
    first = _cli_under_umask_0("--config", str(cfg), "fetch")
    assert first.returncode == 0, first.stderr
    assert f"the archive folder {root} was mode 0777 (open to other local users); it is now 0700" in first.stderr
    assert f"the staging folder {staging} was mode 0777 (open to other local users); it is now 0700" in first.stderr
    assert stat.S_IMODE(root.stat().st_mode) == 0o700 and stat.S_IMODE(staging.stat().st_mode) == 0o700
    second = _cli_under_umask_0("--config", str(cfg), "fetch")
    assert second.returncode == 0 and "it is now 0700" not in second.stderr  # said once
    # A shared sticky folder (as /tmp is) is never closed: others cannot replace what we make in it.
    sticky = tmp_path / "shared-tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    cfg.write_text(cfg.read_text().replace(f'staging_dir = "{staging}"', f'staging_dir = "{sticky}"'))
    third = _cli_under_umask_0("--config", str(cfg), "fetch")
    assert third.returncode == 0 and "it is now 0700" not in third.stderr, third.stderr
    assert stat.S_IMODE(sticky.stat().st_mode) == 0o1777 and list(sticky.iterdir()) == []


def test_an_archive_or_staging_folder_of_another_user_is_refused(tmp_path, sftp_setup, sftp_client_key, pgp_key,
                                                                capsys):
    server, known_hosts, _ = sftp_setup
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    for archive_url, staging_dir, what in ((theirs, tmp_path / "staging", "archive folder"),
                                           (tmp_path / "archive", theirs, "staging folder")):
        cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key,
                           f'[archive]\nurl = "{archive_url}"\n\n[run]\nstaging_dir = "{staging_dir}"\n')
        assert main(["--config", str(cfg), "fetch"]) == 2
        err = capsys.readouterr().err
        assert f"The {what} {theirs} belongs to another user (uid {NOBODY})" in err
    assert list(theirs.iterdir()) == []  # nothing written into it


@pytest.fixture
def shared_dir():
    """A folder user nobody can reach (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="ibreports-perm-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


def _as_nobody(script: str) -> None:
    """Run a shell script as another local user (the attacker)."""
    done = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           "sh", "-euc", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _record(root: Path) -> dict:
    latest = max((root / "runs").rglob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    return json.loads(latest.read_text())


def _outcomes(root: Path) -> dict[str, dict]:
    return {f["name"]: f for f in _record(root)["files"]}


def test_planted_link_and_forged_statements_of_another_user_never_pass_for_archived(
        shared_dir, sftp_setup, sftp_client_key, pgp_key, caplog):
    server, known_hosts, _ = sftp_setup
    root = shared_dir / "archive"
    cfg = write_config(shared_dir, sftp_toml(server, sftp_client_key, known_hosts), pgp_key,
                       f'[archive]\nurl = "{root}"\n')
    assert main(["--config", str(cfg), "fetch"]) == 0
    # An archive left open to others (what older versions made under umask 0).
    for path in [root, *root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    # Another local user swaps a month folder for a link to their own folder holding a forged
    # statement, plants their own month folder with a forged statement, and replaces an original.
    m1, m2 = Path(S1).parent, Path(S2).parent
    _as_nobody(f"""
        cd {root}
        mkdir {m1.parent}/.planted
        echo forged > {m1.parent}/.planted/{Path(S1).name}
        mv {m1} {m1.parent}/.moved1
        ln -s .planted {m1}
        mv {m2} {m2.parent}/.moved2
        mkdir {m2}
        echo forged > {S2}
        rm {S3_ORIGINAL}
        echo forged > {S3_ORIGINAL}
    """)
    caplog.clear()
    assert main(["--config", str(cfg), "fetch"]) == 1
    err = caplog.text
    assert f"the archive folder {root} was mode 0777" in err
    assert "belong to another user and are not counted as archived" in err
    rows = _outcomes(root)
    s1, s2, s3 = (rows[name] for name in (Path(S1).name + ".pgp", Path(S2).name + ".asc", Path(S3_ORIGINAL).name))
    assert s1["outcome"] == "failed" and f"{m1} in the archive folder is a symbolic link" in s1["reason"]
    assert s2["outcome"] == "failed" and f"{m2} in the archive folder belongs to another user (uid {NOBODY})" in s2["reason"]
    assert s3["outcome"] == "failed" and f"{S3_ORIGINAL} in the archive folder belongs to another user" in s3["reason"]
    # Nothing was written through the link or into the planted folder; the forged bytes are untouched.
    assert (root / m1.parent / ".planted" / Path(S1).name).read_bytes() == b"forged\n"
    assert sorted(p.name for p in (root / m1.parent / ".planted").iterdir()) == [Path(S1).name]
    assert (root / S2).read_bytes() == b"forged\n"
    # Once the planted items are gone, the real statements are fetched.
    for planted in (root / m1, root / m2, root / S3_ORIGINAL):
        planted.unlink() if planted.is_symlink() or planted.is_file() else shutil.rmtree(planted)
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert (root / S1).read_bytes() == PLAIN[Path(S1).name]
    assert (root / S2).read_bytes() == PLAIN[Path(S2).name]
    assert (root / S3_ORIGINAL).read_bytes() == server.root.joinpath("outgoing", Path(S3_ORIGINAL).name).read_bytes()
