"""Key generation and key backups through the library API, checked with the real tools.

ssh-keygen and gpg (in fresh homes) judge the generated keys; backups go to a
local folder and to moto's S3 server over HTTP.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ibreports import bundle
from ibreports.errors import KeyMaterialError
from ibreports.keyfiles import folder_fingerprints, gnupg_home
from ibreports.keys import KEY_FILES, backup_keys, generate_keys, restore_keys, ssh_fingerprint, verify_backup
from ibreports.pgp.keyring import holds_secret_encryption_key
from tests.fixtures.s3 import s3_archive_config, s3_test_client

PASS = "correct horse battery staple"
BACKUP_PASS = "a different backup passphrase"
PRIVATE = ("ibkr_sftp_rsa", "ibkr_pgp_secret.asc")


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]] | None:
    """Every entry under ``folder`` with its mode and bytes; None if the folder is absent."""
    if not folder.exists():
        return None
    return {
        str(p.relative_to(folder)): (p.stat().st_mode, p.read_bytes() if p.is_file() else b"")
        for p in sorted(folder.rglob("*"))
    }


def run(*cmd: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def _key_sets(tmp_path_factory):
    """Two unrelated 2048-bit key folders, generated in parallel; os.open calls recorded."""
    calls: list[tuple[str, int, int]] = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, *args, **kwargs):
        calls.append((str(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    records = ListHandler()
    loggers = [logging.getLogger(name) for name in ("gnupg", "ibreports")]
    old_levels = [lg.level for lg in loggers]
    logging.getLogger().addHandler(records)
    for lg in loggers:  # python-gnupg's most talkative setting must not leak the passphrase either
        lg.setLevel(logging.DEBUG)
    try:
        with pytest.MonkeyPatch.context() as mp, ThreadPoolExecutor(2) as pool:
            mp.setattr(os, "open", recording_open)
            main = pool.submit(generate_keys, tmp_path_factory.mktemp("gen") / "keys", PASS, name="Acme Ops",
                               email="ops@example.com", rsa_bits=2048, pgp_bits=2048)
            other = pool.submit(generate_keys, tmp_path_factory.mktemp("other") / "keys", PASS, rsa_bits=2048, pgp_bits=2048)
            return (main.result(), calls, records.lines), other.result().dir
    finally:
        logging.getLogger().removeHandler(records)
        for lg, level in zip(loggers, old_levels):
            lg.setLevel(level)


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()}")


@pytest.fixture(scope="session")
def generated(_key_sets):
    """(KeyReport, os.open calls, log lines) of the main key folder (read-only: copy it before changing it)."""
    return _key_sets[0]


@pytest.fixture(scope="session")
def other_keys(_key_sets) -> Path:
    """A second, unrelated key folder (read-only)."""
    return _key_sets[1]


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch):
    """Bundles here use scrypt n=2**15 (the floor; the header carries it); the CLI tests keep the default."""
    monkeypatch.setattr(bundle, "SCRYPT_LOG2N", 15)


@pytest.fixture
def keys_copy(generated, tmp_path) -> Path:
    dest = tmp_path / "keys"
    shutil.copytree(generated[0].dir, dest)
    return dest


def test_ssh_key_loads_only_with_the_passphrase_and_matches_the_pub_file(generated):
    report, _, _ = generated
    key = report.dir / "ibkr_sftp_rsa"
    pub_line = (report.dir / "ibkr_sftp_rsa.pub").read_text()
    assert pub_line.count("\n") == 1 and pub_line.startswith("ssh-rsa AAAA") and pub_line.split()[2] == "ops@example.com"
    derived = run("ssh-keygen", "-y", "-P", PASS, "-f", str(key))
    assert derived.returncode == 0, derived.stderr
    assert derived.stdout.decode().split()[:2] == pub_line.split()[:2]
    for wrong in ("", "correct horse battery stapl"):
        assert run("ssh-keygen", "-y", "-P", wrong, "-f", str(key)).returncode != 0
    listed = run("ssh-keygen", "-l", "-f", str(report.dir / "ibkr_sftp_rsa.pub")).stdout.decode().split()
    assert listed[0] == "2048" and listed[1] == report.ssh_fingerprint == ssh_fingerprint(pub_line)
    # OpenSSH format, encrypted with aes256-ctr and the bcrypt KDF (like ssh-keygen's own keys).
    body = "".join(key.read_text().splitlines()[1:-1])
    header = base64.b64decode(body)[:64]
    assert header.startswith(b"openssh-key-v1\0") and b"aes256-ctr" in header and b"bcrypt" in header


def test_pgp_public_key_encrypts_to_a_subkey_the_secret_key_decrypts(generated, tmp_path):
    report, _, _ = generated
    sender, receiver = tmp_path / "sender", tmp_path / "receiver"
    for home in (sender, receiver):
        home.mkdir(mode=0o700)
    gpg = ("gpg", "--batch", "--no-tty", "--homedir")
    try:
        assert run(*gpg, str(sender), "--import", str(report.dir / "ibkr_pgp_public.asc")).returncode == 0
        colons = run(*gpg, str(sender), "--with-colons", "--list-keys").stdout.decode().splitlines()
        pub = next(line.split(":") for line in colons if line.startswith("pub:"))
        subs = [line.split(":") for line in colons if line.startswith("sub:")]
        assert "c" in pub[11] and "s" in pub[11] and "e" not in pub[11] and pub[6] == ""  # no expiry
        assert [s[11] for s in subs] == ["e"] and subs[0][2] == "2048"
        assert any("Acme Ops <ops@example.com>" in line for line in colons if line.startswith("uid:"))
        assert report.pgp_fingerprint in colons[colons.index(":".join(pub)) + 1]
        enc = run(*gpg, str(sender), "--trust-model", "always", "--armor", "-r", report.pgp_fingerprint,
                  "--encrypt", stdin=b"statement 2026-11-01\n")
        assert enc.returncode == 0, enc.stderr
        assert run(*gpg, str(receiver), "--import", str(report.dir / "ibkr_pgp_secret.asc")).returncode == 0
        loopback = (*gpg, str(receiver), "--pinentry-mode", "loopback", "--passphrase")
        wrong = run(*loopback, "not the passphrase", "--decrypt", stdin=enc.stdout)
        assert wrong.returncode != 0 and b"statement" not in wrong.stdout
        right = run(*loopback, PASS, "--decrypt", stdin=enc.stdout)
        assert right.returncode == 0 and right.stdout == b"statement 2026-11-01\n"
    finally:
        for home in (sender, receiver):
            run("gpgconf", "--homedir", str(home), "--kill", "gpg-agent")


def test_private_files_are_0600_from_the_first_byte(generated):
    report, calls, _ = generated
    assert (report.dir.stat().st_mode & 0o777) == 0o700
    assert sorted(p.name for p in report.dir.iterdir()) == sorted(KEY_FILES)  # no temporary left over
    for name in KEY_FILES:
        mode = (report.dir / name).stat().st_mode & 0o777
        opened = [c for c in calls if Path(c[0]).parent == report.dir and re.fullmatch(rf"\.{re.escape(name)}\.[0-9a-f]+\.tmp", Path(c[0]).name)]
        assert len(opened) == 1, calls
        _, flags, create_mode = opened[0]
        assert flags & os.O_CREAT and flags & os.O_EXCL
        if name in PRIVATE:
            assert create_mode == 0o600 and mode == 0o600
        else:
            assert mode & 0o077 == 0o044 and mode & 0o600 == 0o600  # public halves are world-readable


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(passphrase="short pass"), "too short"),
    (dict(passphrase="line one long\nline two"), "newline"),
    (dict(passphrase="nul inside passphrase\0"), "NUL"),
    (dict(passphrase=" surrounded by blanks "), "begins or ends"),
    (dict(rsa_bits=1024), "1024 bits is refused"),
    (dict(pgp_bits=8192), "8192 bits is refused"),
    (dict(name="x\nPassphrase: injected"), "printable"),
    (dict(email="not-an-address"), "e-mail"),
    (dict(pgp_expire="forever"), "expiry"),
])
def test_bad_requests_are_refused_before_anything_is_written(tmp_path, kwargs, pattern):
    args = dict(passphrase=PASS, rsa_bits=2048, pgp_bits=2048) | kwargs
    with pytest.raises(KeyMaterialError, match=pattern) as info:
        generate_keys(tmp_path / "keys", **args)
    assert info.value.exit_code == 2 and not (tmp_path / "keys").exists()
    assert args["passphrase"] not in str(info.value) + info.value.remedy


def test_existing_keys_are_refused_and_left_alone(keys_copy):
    before = snapshot(keys_copy)
    with pytest.raises(KeyMaterialError, match="already exist.*ibkr_sftp_rsa.*ibkr_pgp_public.asc.*--force"):
        generate_keys(keys_copy, PASS, rsa_bits=2048, pgp_bits=2048)
    assert snapshot(keys_copy) == before


def test_local_backup_round_trip_restores_identical_files(keys_copy, tmp_path, generated):
    target = tmp_path / "elsewhere" / "keys.bundle"
    rep = backup_keys(keys_copy, str(target), BACKUP_PASS)
    assert target.stat().st_mode & 0o777 == 0o600 and rep.size == target.stat().st_size
    assert PASS.encode() not in target.read_bytes() and b"PRIVATE KEY" not in target.read_bytes()
    manifest = verify_backup(str(target), BACKUP_PASS)
    assert manifest.fingerprints == {"": {"ssh": generated[0].ssh_fingerprint, "pgp": generated[0].pgp_fingerprint}}
    restored = tmp_path / "restored"
    result = restore_keys(str(target), restored, BACKUP_PASS)
    assert sorted(result.written) == sorted(KEY_FILES)
    assert {k: v[1] for k, v in snapshot(restored).items()} == {k: v[1] for k, v in snapshot(keys_copy).items()}
    for name in PRIVATE:
        assert (restored / name).stat().st_mode & 0o777 == 0o600
    again = restore_keys(str(target), restored, BACKUP_PASS)  # identical files are fine
    assert again.written == [] and sorted(again.unchanged) == sorted(KEY_FILES)


def test_backup_includes_retired_keys(keys_copy, other_keys, tmp_path):
    shutil.copytree(other_keys, keys_copy / "retired" / "20260101T000000Z")  # as keygen --force leaves them
    target = tmp_path / "k.bundle"
    rep = backup_keys(keys_copy, str(target), BACKUP_PASS)
    assert sorted(rep.fingerprints) == ["", "retired/20260101T000000Z"] and len(rep.files) == 8
    restore_keys(str(target), tmp_path / "r", BACKUP_PASS)
    assert {k: v[1] for k, v in snapshot(tmp_path / "r").items()} == {k: v[1] for k, v in snapshot(keys_copy).items()}
    assert (tmp_path / "r" / "retired" / "20260101T000000Z" / "ibkr_pgp_secret.asc").stat().st_mode & 0o777 == 0o600


def test_restore_and_keygen_never_write_through_a_symlinked_sub_folder(keys_copy, other_keys, tmp_path):
    shutil.copytree(other_keys, keys_copy / "retired" / "20260101T000000Z")
    target = tmp_path / "k.bundle"
    backup_keys(keys_copy, str(target), BACKUP_PASS)
    restored, outside = tmp_path / "r", tmp_path / "outside"
    restored.mkdir(mode=0o700)
    outside.mkdir()
    (restored / "retired").symlink_to(outside)  # planted: retired -> a folder out of --dir
    for force in (False, True):
        with pytest.raises(KeyMaterialError, match=f"{restored / 'retired'} is a symbolic link") as info:
            restore_keys(str(target), restored, BACKUP_PASS, force=force)
        assert info.value.exit_code == 2
    assert list(outside.iterdir()) == [] and [p.name for p in restored.iterdir()] == ["retired"]
    # keygen --force would move the old keys into retired/: refused before any key is made.
    shutil.rmtree(keys_copy / "retired")
    (keys_copy / "retired").symlink_to(outside)
    before = snapshot(keys_copy)
    with pytest.raises(KeyMaterialError, match="is a symbolic link"):
        generate_keys(keys_copy, PASS, rsa_bits=2048, pgp_bits=2048, force=True)
    assert list(outside.iterdir()) == [] and snapshot(keys_copy) == before


@pytest.fixture
def bundle_file(keys_copy, tmp_path) -> Path:
    target = tmp_path / "b" / "keys.bundle"
    backup_keys(keys_copy, str(target), BACKUP_PASS)
    return target


@pytest.mark.parametrize("where", ["magic", "salt", "middle", "tag"])
def test_tampered_bundle_is_refused_and_nothing_written(bundle_file, tmp_path, where):
    data = bytearray(bundle_file.read_bytes())
    pos = {"magic": 0, "salt": 25, "middle": len(data) // 2, "tag": len(data) - 1}[where]
    data[pos] ^= 0x01
    bundle_file.write_bytes(bytes(data))
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    for target in (tmp_path / "new", existing):
        before = snapshot(target)
        with pytest.raises(KeyMaterialError) as info:
            restore_keys(str(bundle_file), target, BACKUP_PASS)
        assert info.value.exit_code == 2
        assert snapshot(target) == before


def test_wrong_passphrase_is_refused_and_nothing_written(bundle_file, tmp_path):
    with pytest.raises(KeyMaterialError, match="wrong backup passphrase") as info:
        restore_keys(str(bundle_file), tmp_path / "r", "not the backup passphrase")
    assert not (tmp_path / "r").exists() and "not the backup passphrase" not in str(info.value)
    with pytest.raises(KeyMaterialError):
        verify_backup(str(bundle_file), "")


def test_restore_over_different_keys_refused_unless_force(bundle_file, keys_copy, tmp_path, generated, other_keys):
    other = tmp_path / "other"
    shutil.copytree(other_keys, other)
    before = snapshot(other)
    with pytest.raises(KeyMaterialError, match="different files: ibkr_pgp_public.asc, ibkr_pgp_secret.asc"):
        restore_keys(str(bundle_file), other, BACKUP_PASS)
    assert snapshot(other) == before
    result = restore_keys(str(bundle_file), other, BACKUP_PASS, force=True)
    assert result.retired is not None
    assert {n: (result.retired / n).read_bytes() for n in KEY_FILES} == {n: before[n][1] for n in KEY_FILES}
    assert all((other / n).read_bytes() == (keys_copy / n).read_bytes() for n in KEY_FILES)
    assert result.fingerprints[""]["ssh"] == generated[0].ssh_fingerprint


def _reseal(bundle_file: Path, edit) -> None:
    """Decrypt, edit the JSON payload, encrypt again with the right passphrase (a buggy or forged backup)."""
    payload = json.loads(bundle._unseal(bundle_file.read_bytes(), BACKUP_PASS))
    edit(payload)
    bundle_file.write_bytes(bundle._seal(json.dumps(payload).encode(), BACKUP_PASS))


def _fingerprints(folder: Path) -> dict[str, str]:
    return folder_fingerprints({n: (folder / n).read_bytes() for n in KEY_FILES})[""]


def test_an_older_bundle_over_newer_keys_is_refused_unless_allowed(bundle_file, tmp_path, other_keys):
    """A rollback: the bundle (created 2020) holds other keys than the newer ones in --dir."""
    _reseal(bundle_file, lambda p: p.update(created="2020-01-01T00:00:00Z"))
    ours = verify_backup(str(bundle_file), BACKUP_PASS).fingerprints[""]
    newer = tmp_path / "newer"
    shutil.copytree(other_keys, newer)
    theirs = _fingerprints(newer)
    before = snapshot(newer)
    for force in (False, True):  # --force retires different files; it does not allow a rollback
        with pytest.raises(KeyMaterialError) as info:
            restore_keys(str(bundle_file), newer, BACKUP_PASS, force=force)
        said = str(info.value)
        assert f"The key backup {bundle_file} was created 2020-01-01 00:00:00 UTC (sFTP {ours['ssh']}, " \
               f"PGP {ours['pgp']}), before the keys it would replace in {newer} were made 2" in said
        assert f"(sFTP {theirs['ssh']}, PGP {theirs['pgp']}): the keys in {newer} are newer" in said
        assert "--allow-older" in said and info.value.exit_code == 2
        assert snapshot(newer) == before
    result = restore_keys(str(bundle_file), newer, BACKUP_PASS, force=True, allow_older=True)
    assert result.retired is not None and _fingerprints(result.retired) == theirs
    assert result.fingerprints[""] == ours and result.created == "2020-01-01T00:00:00Z"
    # Nothing replaced (an empty folder), or the very same keys: no rollback to refuse.
    restore_keys(str(bundle_file), tmp_path / "empty", BACKUP_PASS)
    assert restore_keys(str(bundle_file), newer, BACKUP_PASS).written == []


def test_an_older_bundle_under_a_newer_bundles_name_is_refused(keys_copy, tmp_path):
    folder = tmp_path / "backups"
    made = Path(backup_keys(keys_copy, str(folder) + "/", BACKUP_PASS).url)
    _reseal(made, lambda p: p.update(created="2020-01-01T00:00:00Z"))  # an old bundle put under the new name
    stamp = made.name[len("ibreports-keys-"):-len(".bundle")]
    named = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]} UTC"
    with pytest.raises(KeyMaterialError) as info:
        restore_keys(str(folder), tmp_path / "r", BACKUP_PASS)  # the folder's newest bundle, by name
    assert f"The key backup {made} is named as made {named} but was created 2020-01-01 00:00:00 UTC" in str(info.value)
    assert "an older bundle under a newer one's name" in str(info.value) and "--allow-older" in str(info.value)
    assert not (tmp_path / "r").exists()
    assert restore_keys(str(folder), tmp_path / "r", BACKUP_PASS, allow_older=True).written


@pytest.mark.parametrize("edit, pattern", [
    (lambda p: p["fingerprints"][""].update(ssh="SHA256:" + "A" * 43), "fingerprints its manifest"),
    (lambda p: p["files"]["ibkr_sftp_rsa"].update(sha256="0" * 64), "sha256"),
    (lambda p: p["files"].update({"../escape": p["files"]["ibkr_sftp_rsa"]}), "unsafe path"),
    (lambda p: p.update(files=[]), "malformed"),
    (lambda p: p["files"]["ibkr_sftp_rsa.pub"].update(
        data=base64.b64encode(b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 x\n").decode(),
        sha256=__import__("hashlib").sha256(b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 x\n").hexdigest()),
     "does not belong"),
])
def test_restore_checks_sums_fingerprints_and_paths_before_writing(bundle_file, tmp_path, edit, pattern):
    _reseal(bundle_file, edit)
    with pytest.raises(KeyMaterialError, match=pattern):
        restore_keys(str(bundle_file), tmp_path / "r", BACKUP_PASS)
    assert not (tmp_path / "r").exists() and not (tmp_path / "escape").exists()


def test_forged_header_cannot_demand_huge_scrypt_work(bundle_file):
    data = bytearray(bundle_file.read_bytes())
    data[10] = 40  # log2(n): 2**40 would need terabytes
    bundle_file.write_bytes(bytes(data))
    with pytest.raises(KeyMaterialError, match="wrong backup passphrase"):
        verify_backup(str(bundle_file), BACKUP_PASS)


def test_backup_refuses_mismatched_pair_and_destination_inside_the_folder(keys_copy, tmp_path, other_keys):
    with pytest.raises(KeyMaterialError, match="inside the key folder"):
        backup_keys(keys_copy, str(keys_copy / "b.bundle"), BACKUP_PASS)
    with pytest.raises(KeyMaterialError, match="too short"):
        backup_keys(keys_copy, str(tmp_path / "b.bundle"), "short")
    shutil.copy(other_keys / "ibkr_sftp_rsa.pub", keys_copy / "ibkr_sftp_rsa.pub")
    with pytest.raises(KeyMaterialError, match="does not belong"):
        backup_keys(keys_copy, str(tmp_path / "b.bundle"), BACKUP_PASS)
    assert not (tmp_path / "b.bundle").exists()


def test_s3_backup_round_trip(keys_copy, tmp_path, s3_server, s3_bucket, generated):
    config = s3_archive_config(s3_server, s3_bucket)
    url = f"s3://{s3_bucket}/backups/keys.bundle"
    backup_keys(keys_copy, url, BACKUP_PASS, config)
    head = s3_test_client(s3_server).head_object(Bucket=s3_bucket, Key="backups/keys.bundle")
    assert head["ServerSideEncryption"] == "AES256"
    assert verify_backup(url, BACKUP_PASS, config).fingerprints[""]["pgp"] == generated[0].pgp_fingerprint
    with pytest.raises(KeyMaterialError):
        restore_keys(url, tmp_path / "r", "wrong backup passphrase", config)
    assert not (tmp_path / "r").exists()
    restore_keys(url, tmp_path / "r", BACKUP_PASS, config)
    assert all((tmp_path / "r" / n).read_bytes() == (keys_copy / n).read_bytes() for n in KEY_FILES)


def test_generation_logs_never_contain_the_passphrase(generated):
    lines = generated[2]
    assert any(line.startswith("gnupg ") for line in lines)  # python-gnupg did log at DEBUG
    assert any("Generating a 2048-bit RSA key for sFTP" in line for line in lines)
    assert not [line for line in lines if PASS in line]


def test_keygen_checks_the_exported_secret_key_can_decrypt(pgp_key):
    """keygen exports again when gpg's export lost the encryption subkey: the check must tell the two apart."""
    with gnupg_home() as home:
        assert holds_secret_encryption_key(home, pgp_key.secret_file.read_bytes(), pgp_key.fingerprint)
    with gnupg_home() as home:  # the public half carries the subkey but no secret part of it
        assert not holds_secret_encryption_key(home, pgp_key.public_file.read_bytes(), pgp_key.fingerprint)
