"""A second local user on the machine: what they plant in the shared temporary folder is never
stopped, followed or removed by our start-up sweeps.

The attacker is a real second user (``nobody``, through setpriv) with a live gpg-agent of its
own. That side runs only gpg-agent and gpg-connect-agent (system binaries), never Python from
the checkout, so it works when the checkout sits under a 0700 folder.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from ibreports.archive.local import LocalArchive
from ibreports.cli import main
from ibreports.config import ArchiveConfig
from ibreports.errors import DecryptionError
from ibreports.files import LOCK_NAME, sweep_abandoned
from ibreports.pgp import Decryptor, sweep_abandoned_homes
from ibreports.runstate import STAGING_PREFIX
from tests.fixtures.pgpkeys import encrypt_bytes
from tests.waiting import eventually

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             "env", "-i", "PATH=/usr/bin:/bin", "HOME=/nonexistent", "LC_ALL=C"]


@pytest.fixture
def shared_tmp(monkeypatch):
    """A sticky, world-writable folder like /tmp, used as the temporary folder: private to this
    test, so no other run on the machine sweeps what we plant."""
    base = Path(tempfile.mkdtemp(prefix="ibr-shared-", dir="/tmp"))
    base.chmod(0o1777)
    monkeypatch.setenv("TMPDIR", str(base))
    tempfile.tempdir = None
    try:
        yield base
    finally:
        tempfile.tempdir = None
        shutil.rmtree(base, ignore_errors=True)


class NobodyAgent:
    """A gpg-agent of user nobody, with its own GNUPGHOME."""

    def __init__(self, base: Path) -> None:
        self.home = base / "nobody-gnupg"
        self.home.mkdir(mode=0o700)
        os.chown(self.home, NOBODY, NOBODY)
        # The daemon keeps its output open: a file, not a pipe we would wait on.
        with tempfile.TemporaryFile() as log:
            started = subprocess.run([*AS_NOBODY, "gpg-agent", "--homedir", str(self.home), "--daemon"],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=60)
            log.seek(0)
            assert started.returncode == 0, log.read()
        self.socket = self.home / "S.gpg-agent"
        self.pid = self.answer()
        assert self.pid

    def answer(self) -> int | None:
        """The agent's process ID as it tells it to its own user, or None when it does not answer."""
        done = subprocess.run([*AS_NOBODY, "gpg-connect-agent", "--no-autostart", "--homedir", str(self.home),
                               "getinfo pid", "/bye"], capture_output=True, text=True, timeout=30)
        lines = done.stdout.split("\n")
        data = [line[2:] for line in lines if line.startswith("D ")]
        return int(data[0]) if done.returncode == 0 and data and "OK" in lines else None

    def stop(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass


@pytest.fixture
def nobody_agent(shared_tmp):
    agent = NobodyAgent(shared_tmp)
    try:
        yield agent
    finally:
        agent.stop()


def _plant(base: Path, name: str, owner: int, agent: NobodyAgent, how: str) -> Path:
    """An abandoned-looking home (0700, a free lock) whose S.gpg-agent leads to nobody's agent."""
    folder = base / name
    folder.mkdir(mode=0o700)
    (folder / LOCK_NAME).write_bytes(b"")
    (folder / "pubring.kbx").write_bytes(b"planted")
    sock = folder / "S.gpg-agent"
    if how == "redirect":  # what gpg itself writes when a socket lives elsewhere (Assuan redirect)
        sock.write_text(f"%Assuan%\nsocket={agent.socket}\n")
    else:
        sock.symlink_to(agent.socket)
    for path in (folder, folder / LOCK_NAME, folder / "pubring.kbx", sock):
        os.chown(path, owner, owner, follow_symlinks=False)
    return folder


def _tree(folder: Path) -> dict[str, tuple]:
    out = {}
    for path in [folder, *folder.rglob("*")]:
        info = os.lstat(path)
        out[str(path.relative_to(folder))] = (info.st_mode, info.st_uid, info.st_ino, os.path.islink(path) and
                                              os.readlink(path), path.is_file() and not path.is_symlink() and
                                              path.read_bytes())
    return out


def test_the_planted_attack_works_on_a_naive_sweep(shared_tmp, nobody_agent):
    """The threat is real: gpgconf --kill in a folder with a redirect stops nobody's agent."""
    planted = _plant(shared_tmp, "ibr-gpg-naive", NOBODY, nobody_agent, "redirect")
    subprocess.run(["gpgconf", "--homedir", str(planted), "--kill", "gpg-agent"], capture_output=True, timeout=30)
    assert eventually(lambda: nobody_agent.answer() is None, timeout=15)


def test_planted_homes_never_stop_another_users_agent(shared_tmp, nobody_agent, caplog):
    theirs = _plant(shared_tmp, "ibr-gpg-theirs", NOBODY, nobody_agent, "redirect")
    theirs_link = _plant(shared_tmp, "ibreports-gpg-theirs", NOBODY, nobody_agent, "symlink")
    ours_redirect = _plant(shared_tmp, "ibr-gpg-ours-redirect", os.geteuid(), nobody_agent, "redirect")
    ours_link = _plant(shared_tmp, "ibreports-verify-ours-link", os.geteuid(), nobody_agent, "symlink")
    (shared_tmp / "ibr-gpg-link").symlink_to(nobody_agent.home)  # a link of ours to nobody's own home
    before = {p: _tree(p) for p in (theirs, theirs_link, nobody_agent.home)}

    # Any command sweeps at its start (this one then fails: there is no config).
    assert main(["--config", str(shared_tmp / "none.toml"), "status"]) == 2
    assert sweep_abandoned_homes() == 0  # and again, directly: nothing left that is ours to take

    assert nobody_agent.answer() == nobody_agent.pid  # alive, and still answers its own user
    assert {p: _tree(p) for p in before} == before  # another user's folders: not one byte changed
    assert os.path.islink(shared_tmp / "ibr-gpg-link") and nobody_agent.socket.exists()
    # Our own abandoned folders go, without gpgconf ever being pointed at what their socket names.
    assert not os.path.lexists(ours_redirect) and not os.path.lexists(ours_link)
    assert "is not a socket of ours" in caplog.text


def test_a_planted_redirect_to_a_concurrent_runs_agent_does_not_break_its_decrypts(shared_tmp, pgp_key, tmp_path,
                                                                                    caplog):
    """The issue's attack: the redirect leads to the agent of a live run (ours), whose decrypts then
    failed as "no key" once the sweep had stopped it."""
    message = tmp_path / "statement.xml.pgp"
    encrypt_bytes(pgp_key.public_file, b"<FlexQueryResponse/>", message)
    with Decryptor([pgp_key.secret_file], pgp_key.passphrase, homes=1) as live:
        socket = live.homes[0] / "S.gpg-agent"
        assert stat.S_ISSOCK(os.lstat(socket).st_mode)  # the live run's agent is up
        for owner, name in ((NOBODY, "ibr-gpg-to-live-run"), (os.geteuid(), "ibr-gpg-ours-to-live-run")):
            folder = shared_tmp / name
            folder.mkdir(mode=0o700)
            (folder / LOCK_NAME).write_bytes(b"")
            (folder / "S.gpg-agent").write_text(f"%Assuan%\nsocket={socket}\n")
            for path in (folder, folder / LOCK_NAME, folder / "S.gpg-agent"):
                os.chown(path, owner, owner)
        assert sweep_abandoned_homes() == 1  # ours (an abandoned folder) goes; nobody's stays
        assert (shared_tmp / "ibr-gpg-to-live-run" / "S.gpg-agent").exists()
        live.decrypt(message, tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == b"<FlexQueryResponse/>"
        # Control: what the old sweep did through that redirect makes the live run's next decrypt fail.
        subprocess.run(["gpgconf", "--homedir", str(shared_tmp / "ibr-gpg-to-live-run"), "--kill", "gpg-agent"],
                       capture_output=True, timeout=30)
        assert eventually(lambda: not socket.exists(), timeout=15)
        with pytest.raises(DecryptionError):
            live.decrypt(message, tmp_path / "out2")


def test_another_users_folders_under_every_swept_prefix_are_left_alone(shared_tmp):
    """Staging folders and GnuPG homes alike: only a 0700 folder of ours is swept."""
    planted = []
    for prefix in (STAGING_PREFIX, "ibr-gpg-", "ibreports-gpg-", "ibreports-verify-"):
        for owner, mode in ((NOBODY, 0o700), (os.geteuid(), 0o755)):
            folder = shared_tmp / f"{prefix}{owner}-{mode:o}"
            folder.mkdir()
            folder.chmod(mode)
            (folder / LOCK_NAME).write_bytes(b"")
            (folder / "data").write_bytes(b"theirs")
            for path in (folder, folder / LOCK_NAME, folder / "data"):
                os.chown(path, owner, owner)
            planted.append(folder)
    mine = shared_tmp / f"{STAGING_PREFIX}mine"
    mine.mkdir(mode=0o700)
    (mine / LOCK_NAME).write_bytes(b"")
    before = {p: _tree(p) for p in planted}
    assert sweep_abandoned(STAGING_PREFIX, shared_tmp) == 1 and not mine.exists()
    assert sweep_abandoned_homes() == 0
    assert {p: _tree(p) for p in planted} == before


def test_a_shared_archive_root_keeps_another_users_temporary_files(shared_tmp):
    """The inventory removes dead runs' .tmp-* files: ours only, even when we are root."""
    root = shared_tmp / "archive"
    root.mkdir()
    root.chmod(0o1777)  # a sticky shared folder is accepted as an archive root (as /tmp is)
    theirs, ours = root / ".tmp-theirs", root / ".tmp-ours"
    theirs.write_bytes(b"their upload")
    os.chown(theirs, NOBODY, NOBODY)
    ours.write_bytes(b"half")
    archive = LocalArchive(ArchiveConfig(url=str(root)))
    assert archive.inventory() == {}
    assert theirs.read_bytes() == b"their upload" and not ours.exists()
    fd = os.open(theirs, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # and nobody ever locked it on our behalf
    finally:
        os.close(fd)
