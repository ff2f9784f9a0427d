"""`ibreports keygen` and `ibreports keys ...` driven in-process through ibreports.cli.main.

The default 4096-bit run is generated once per module; its sFTP key must log in to a
real sshd, before and after a backup/restore round trip. The prompt is tested in a
real pseudo-terminal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from ibreports.cli import main
from tests.fixtures.s3 import s3_test_client
from tests.fixtures.sshd import make_client_key

KEY_PASS = "module key passphrase 42"
BACKUP_PASS = "module backup passphrase 42"
SECRETS = (KEY_PASS, BACKUP_PASS)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("IBREPORTS_KEY_PASSPHRASE", "IBREPORTS_BACKUP_PASSPHRASE", "IBREPORTS_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no ./ibreports.toml, relative --dir lands in tmp_path


@pytest.fixture(scope="module")
def keygen_default(tmp_path_factory):
    """(rc, stdout, stderr, folder) of `ibreports keygen` with every size at its default (4096)."""
    folder = tmp_path_factory.mktemp("cli") / "keys"
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setenv("IBREPORTS_KEY_PASSPHRASE", KEY_PASS)
        rc = main(["keygen", "--dir", str(folder), "--name", "Acme Capital", "--email", "ops@acme.example"])
    return rc, out.getvalue(), err.getvalue(), folder


def cli(capfd, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capfd.readouterr()
    for secret in SECRETS:
        assert secret not in out and secret not in err
    return rc, out, err


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def login(server, key: Path, passphrase: str, known_hosts: Path) -> list[str]:
    """SFTP login with paramiko, host key pinned (RejectPolicy); returns the root listing."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        pkey = paramiko.RSAKey.from_private_key_file(str(key), password=passphrase or None)
        client.connect(server.host, server.port, username=server.username, pkey=pkey,
                       look_for_keys=False, allow_agent=False, timeout=10)
        with client.open_sftp() as sftp:
            return sftp.listdir(str(server.root))
    finally:
        client.close()


def test_keygen_defaults_are_4096_bits_and_print_fingerprints_and_next_steps(keygen_default, tmp_path):
    rc, out, err, folder = keygen_default
    assert rc == 0, err
    for secret in SECRETS:
        assert secret not in out + err
    listed = run("ssh-keygen", "-l", "-f", str(folder / "ibkr_sftp_rsa.pub")).stdout.split()
    assert listed[0] == "4096" and listed[-1] == "(RSA)"
    assert listed[1] in out  # SHA256:... exactly as ssh-keygen shows it
    derived = run("ssh-keygen", "-y", "-P", KEY_PASS, "-f", str(folder / "ibkr_sftp_rsa"))
    assert derived.stdout.split()[:2] == (folder / "ibkr_sftp_rsa.pub").read_text().split()[:2]
    assert run("ssh-keygen", "-y", "-P", "", "-f", str(folder / "ibkr_sftp_rsa")).returncode != 0
    home = tmp_path / "gpg"
    home.mkdir(mode=0o700)
    try:
        run("gpg", "--batch", "--homedir", str(home), "--import", str(folder / "ibkr_pgp_public.asc"))
        colons = [line.split(":") for line in run("gpg", "--homedir", str(home), "--with-colons", "--list-keys").stdout.splitlines()]
    finally:
        run("gpgconf", "--homedir", str(home), "--kill", "gpg-agent")
    pub = next(c for c in colons if c[0] == "pub")
    sub = next(c for c in colons if c[0] == "sub")
    fpr = colons[colons.index(pub) + 1][9]
    assert (pub[2], sub[2], sub[11]) == ("4096", "4096", "e") and fpr in out
    assert "reportingintegration@interactivebrokers.com" in out and "Client Portal" in out
    assert "ibreports keys backup" in out and "ibkr_sftp_rsa.pub" in out and "ibkr_pgp_public.asc" in out
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert all((folder / n).stat().st_mode & 0o777 == 0o600 for n in ("ibkr_sftp_rsa", "ibkr_pgp_secret.asc"))


def test_generated_and_restored_keys_log_in_to_a_real_sshd(keygen_default, sshd_factory, tmp_path, capfd, monkeypatch):
    folder = keygen_default[3]
    stranger_key, stranger_pub = make_client_key(tmp_path, None)
    server = sshd_factory([(folder / "ibkr_sftp_rsa.pub").read_text()])
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    assert "outgoing" in login(server, folder / "ibkr_sftp_rsa", KEY_PASS, known_hosts)
    with pytest.raises(paramiko.AuthenticationException):
        login(server, stranger_key, "", known_hosts)

    monkeypatch.setenv("IBREPORTS_BACKUP_PASSPHRASE", BACKUP_PASS)
    bundle = tmp_path / "offsite" / "keys.bundle"
    rc, out, err = cli(capfd, "keys", "backup", "--dir", str(folder), "--to", str(bundle))
    assert rc == 0, err
    assert bundle.stat().st_mode & 0o777 == 0o600 and "4 files" in out
    restored = tmp_path / "restored"  # an existing folder, like a fresh checkout's 0755 keys/
    restored.mkdir()
    restored.chmod(0o755)
    rc, out, err = cli(capfd, "keys", "restore", "--from", str(bundle), "--dir", str(restored))
    assert rc == 0, err
    assert restored.stat().st_mode & 0o777 == 0o700 and "it is now 0700" in out
    assert "Restored 4 files" in out and keygen_default[1].split("fingerprint ")[1].split()[0] in out
    assert "outgoing" in login(server, restored / "ibkr_sftp_rsa", KEY_PASS, known_hosts)


def test_backup_restore_through_s3_uses_the_config_archive_settings(
    keygen_default, s3_server, s3_bucket, tmp_path, capfd, monkeypatch
):
    folder = keygen_default[3]
    config = tmp_path / "ibreports.toml"
    config.write_text(f'[archive]\nurl = "s3://{s3_bucket}/archive"\nendpoint_url = "{s3_server}"\nregion = "us-east-1"\n')
    (tmp_path / "backup-pass").write_text(BACKUP_PASS + "\n")  # trailing newline is stripped
    os.chmod(tmp_path / "backup-pass", 0o600)
    url = f"s3://{s3_bucket}/key-backups/"
    rc, out, err = cli(capfd, "--config", str(config), "keys", "backup", "--dir", str(folder), "--to", url,
                       "--passphrase-file", str(tmp_path / "backup-pass"))
    assert rc == 0, err
    listed = s3_test_client(s3_server).list_objects_v2(Bucket=s3_bucket, Prefix="key-backups/")["Contents"]
    assert len(listed) == 1 and listed[0]["Key"].endswith(".bundle")
    stored = f"s3://{s3_bucket}/{listed[0]['Key']}"
    monkeypatch.setenv("IBREPORTS_BACKUP_PASSPHRASE", BACKUP_PASS)  # the variable works as well as the file
    rc, out, err = cli(capfd, "--config", str(config), "keys", "verify", "--from", stored)
    assert rc == 0 and "OK, 4 files" in out, err
    monkeypatch.setenv("IBREPORTS_BACKUP_PASSPHRASE", "not the right one at all")
    rc, out, err = cli(capfd, "--config", str(config), "keys", "restore", "--from", stored, "--dir", str(tmp_path / "r"))
    assert rc == 2 and "wrong backup passphrase" in err and not (tmp_path / "r").exists()
    monkeypatch.setenv("IBREPORTS_BACKUP_PASSPHRASE", BACKUP_PASS)
    rc, out, err = cli(capfd, "--config", str(config), "keys", "restore", "--from", stored, "--dir", str(tmp_path / "r"))
    assert rc == 0, err
    assert (tmp_path / "r" / "ibkr_pgp_secret.asc").read_bytes() == (folder / "ibkr_pgp_secret.asc").read_bytes()


def test_verify_and_restore_take_the_folder_url_backup_took(keygen_default, s3_server, s3_bucket, tmp_path, capfd,
                                                            monkeypatch):
    folder = keygen_default[3]
    config = tmp_path / "ibreports.toml"
    config.write_text(f'[archive]\nurl = "s3://{s3_bucket}/archive"\nendpoint_url = "{s3_server}"\nregion = "us-east-1"\n')
    monkeypatch.setenv("IBREPORTS_BACKUP_PASSPHRASE", BACKUP_PASS)
    client = s3_test_client(s3_server)
    old = "ibreports-keys-20000101T000000Z.bundle"  # older by its name: never picked while a newer one exists
    local = tmp_path / "backups"
    local.mkdir()
    (local / old).write_bytes(b"not a bundle")
    (local / "notes.txt").write_text("not a bundle either")
    client.put_object(Bucket=s3_bucket, Key=f"kb/{old}", Body=b"not a bundle")
    for url in (str(local), f"s3://{s3_bucket}/kb/"):
        rc, out, err = cli(capfd, "--config", str(config), "keys", "backup", "--dir", str(folder), "--to", url)
        assert rc == 0, err
        newest = out.split(" to ")[1].split(" (")[0]
        assert newest.startswith(url.rstrip("/") + "/ibreports-keys-2") and not newest.endswith(old)
        rc, out, err = cli(capfd, "--config", str(config), "keys", "verify", "--from", url)
        assert rc == 0 and out.startswith(f"{newest}: OK, 4 files"), err
        target = tmp_path / ("r-s3" if url.startswith("s3://") else "r-local")
        rc, out, err = cli(capfd, "--config", str(config), "keys", "restore", "--from", url, "--dir", str(target))
        assert rc == 0 and f"Restored 4 files from {newest} into {target}" in out, err
        assert (target / "ibkr_pgp_secret.asc").read_bytes() == (folder / "ibkr_pgp_secret.asc").read_bytes()
    # A folder with no bundle, and a bundle that is not there: exit 2, and no word of fetch.
    (tmp_path / "empty").mkdir()
    for url, said in ((str(tmp_path / "empty"), "holds no key backup"), (f"s3://{s3_bucket}/empty/", "holds no key backup"),
                      (f"s3://{s3_bucket}/kb/missing.bundle", "There is no key backup at")):
        for action in ("verify", "restore"):
            rc, out, err = cli(capfd, "--config", str(config), "keys", action, "--from", url)
            assert rc == 2 and said in err and "fetch" not in err, err


def test_restore_refuses_an_older_bundle_renamed_as_the_newest_unless_allow_older(keygen_default, tmp_path, capfd,
                                                                                  monkeypatch):
    folder = keygen_default[3]
    monkeypatch.setenv("IBREPORTS_BACKUP_PASSPHRASE", BACKUP_PASS)
    backups = tmp_path / "backups"
    rc, out, err = cli(capfd, "keys", "backup", "--dir", str(folder), "--to", str(backups) + "/")
    assert rc == 0, err
    made = Path(out.split(" to ")[1].split(" (")[0])
    renamed = backups / "ibreports-keys-29991231T000000Z.bundle"  # passes for the newest bundle by its name
    made.rename(renamed)
    for extra in ([], ["--force"]):
        rc, out, err = cli(capfd, "keys", "restore", "--from", str(backups), "--dir", "r", *extra)
        assert rc == 2 and f"The key backup {renamed} is named as made 2999-12-31 00:00:00 UTC but was created " in err
        assert "an older bundle under a newer one's name" in err and "pass --allow-older" in err
        assert not Path("r").exists()
    rc, out, err = cli(capfd, "keys", "restore", "--from", str(backups), "--dir", "r", "--allow-older")
    assert rc == 0 and f"Restored 4 files from {renamed} into r" in out and "The bundle was made 2" in out, err


def test_keygen_from_passphrase_file_with_force_retires_the_old_keys(keygen_default, tmp_path, capfd):
    shutil.copytree(keygen_default[3], "k")
    old = {p.name: p.read_bytes() for p in Path("k").iterdir()}
    secret_file = tmp_path / "pass.txt"
    secret_file.write_text("file passphrase 12345\n")  # the trailing newline is not part of it
    args = ("keygen", "--dir", "k", "--rsa-bits", "2048", "--pgp-bits", "2048", "--passphrase-file", str(secret_file))
    rc, out, err = cli(capfd, *args)
    assert rc == 2 and "already exist" in err and "--force" in err
    for name in old:
        assert name in err
    assert {p.name: p.read_bytes() for p in Path("k").iterdir()} == old
    rc, out, err = cli(capfd, *args, "--force")
    assert rc == 0, err
    assert "file passphrase" not in out + err
    retired = list(Path("k/retired").iterdir())
    assert len(retired) == 1 and re.fullmatch(r"\d{8}T\d{6}Z", retired[0].name) and str(retired[0]) in out
    assert {p.name: p.read_bytes() for p in retired[0].iterdir()} == old
    assert run("ssh-keygen", "-y", "-P", "file passphrase 12345", "-f", "k/ibkr_sftp_rsa").returncode == 0
    assert run("ssh-keygen", "-l", "-f", "k/ibkr_sftp_rsa.pub").stdout.split()[0] == "2048"


@pytest.mark.parametrize("owned", [True, False])
def test_keygen_makes_an_existing_key_folder_private(tmp_path, capfd, monkeypatch, owned):
    folder = tmp_path / "keys"  # like a checkout's keys/ (with .gitkeep): 0755
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    if not owned:  # a folder someone else owns cannot be chmod'ed: keygen says what to do
        monkeypatch.setattr(os, "getuid", lambda: folder.stat().st_uid + 1)
    monkeypatch.setenv("IBREPORTS_KEY_PASSPHRASE", KEY_PASS)
    rc, out, err = cli(capfd, "keygen", "--dir", str(folder), "--rsa-bits", "2048", "--pgp-bits", "2048")
    assert rc == 0, err
    if owned:
        assert folder.stat().st_mode & 0o777 == 0o700 and f"{folder} was mode 0755; it is now 0700" in out
    else:
        assert folder.stat().st_mode & 0o777 == 0o755 and f"Warning: key folder {folder} is mode 0755" in out
        assert f"chmod 700 {folder}" in out


@pytest.mark.parametrize("env, extra, pattern", [
    ("Xq7#zZ", (), "too short"),
    ("line one is long\nline two", (), "newline"),
    (KEY_PASS, ("--rsa-bits", "1024"), "1024 bits is refused"),
    (None, (), "IBREPORTS_KEY_PASSPHRASE"),  # no variable, no file, no terminal
])
def test_keygen_refusals_exit_2_and_write_nothing(tmp_path, capfd, monkeypatch, env, extra, pattern):
    if env is not None:
        monkeypatch.setenv("IBREPORTS_KEY_PASSPHRASE", env)
    rc, out, err = cli(capfd, "--debug", "keygen", "--dir", "k", *extra)
    assert rc == 2 and pattern in err
    if env:
        assert env not in out + err
    assert not Path("k").exists()


def test_passphrases_never_reach_output_or_logs(keygen_default, tmp_path, capfd, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    folder = keygen_default[3]
    monkeypatch.setenv("IBREPORTS_KEY_PASSPHRASE", KEY_PASS)
    monkeypatch.setenv("IBREPORTS_BACKUP_PASSPHRASE", BACKUP_PASS)
    outcomes = [
        cli(capfd, "--debug", "keygen", "--dir", str(folder)),  # refused: keys exist
        cli(capfd, "--debug", "keys", "backup", "--dir", str(folder), "--to", str(tmp_path / "b.bundle")),
        cli(capfd, "--debug", "keys", "restore", "--from", str(tmp_path / "b.bundle"), "--dir", str(tmp_path / "r")),
        cli(capfd, "--debug", "keys", "restore", "--from", str(tmp_path / "missing.bundle"), "--dir", str(tmp_path / "r")),
    ]
    monkeypatch.setenv("IBREPORTS_BACKUP_PASSPHRASE", KEY_PASS)  # wrong for this bundle
    outcomes.append(cli(capfd, "--debug", "keys", "verify", "--from", str(tmp_path / "b.bundle")))
    assert [rc for rc, _, _ in outcomes] == [2, 0, 0, 2, 2]
    assert caplog.text  # --debug did log (tracebacks of the refusals)
    for secret in SECRETS:
        assert secret not in caplog.text


def _in_terminal(argv: list[str], answers: list[str], cwd: Path) -> tuple[int, str]:
    """Run ibreports in a real pseudo-terminal, answering each prompt in turn; (exit code, screen)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IBREPORTS_")}
    pid, fd = pty.fork()
    if pid == 0:  # child: exec at once (the parent has threads)
        os.chdir(cwd)
        os.execve(sys.executable, [sys.executable, "-c", "from ibreports.cli import run; run()", *argv], env)
    screen, pending, deadline = b"", list(answers), time.monotonic() + 60
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
        if pending and screen.endswith(b": "):  # a prompt waits for its answer
            os.write(fd, pending.pop(0).encode() + b"\n")
    else:
        os.kill(pid, 9)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), screen.decode(errors="replace")


def test_prompt_asks_twice_without_echo(keygen_default, tmp_path):
    folder = keygen_default[3]
    rc, screen = _in_terminal(["keys", "backup", "--dir", str(folder), "--to", "b.bundle"],
                              [BACKUP_PASS, BACKUP_PASS + "x"], tmp_path)
    assert rc == 2 and "do not match" in screen and BACKUP_PASS not in screen
    assert screen.count("Backup passphrase") == 2 and not (tmp_path / "b.bundle").exists()
    rc, screen = _in_terminal(["keys", "backup", "--dir", str(folder), "--to", "b.bundle"],
                              [BACKUP_PASS, BACKUP_PASS], tmp_path)
    assert rc == 0 and "Backed up 4 files" in screen and BACKUP_PASS not in screen
    rc, screen = _in_terminal(["keys", "verify", "--from", "b.bundle"], [BACKUP_PASS], tmp_path)
    assert rc == 0 and screen.count("Backup passphrase") == 1 and "OK, 4 files" in screen
