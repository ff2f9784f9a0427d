"""A full disk is named, never taken for a bad file: staging (the download), gpg's output, the local
archive and a Flex Web Service statement each meet a real ENOSPC on a small tmpfs. The message
names the folder, its file system and the space needed; nothing is lost (the server's copy stays,
no partial file passes for a complete one) and the next run, given space, archives everything.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ibreports.cli import main
from tests.fixtures.pgpkeys import encrypt_bytes
from tests.reliability import (
    assert_archived_exactly, local_archive_toml, local_objects, seed, sftp_toml, write_config,
)


@pytest.fixture
def small_disk():
    """mount(folder, size): a tmpfs of ``size`` at ``folder`` (we are root); grow(folder, size) gives it
    room; all unmounted at teardown."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        assert done.returncode == 0, f"mounting a tmpfs needs root: {done.stderr}"
        mounted.append(folder)
        return folder

    def grow(folder: Path, size: str) -> None:
        done = subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    mount.grow = grow
    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.fixture
def setup(tmp_path, sshd_factory, sftp_client_key, pgp_key, monkeypatch):
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_SSH_PASSPHRASE", sftp_client_key[2])
    server = sshd_factory([sftp_client_key[1]])
    delivery = seed(server.root / "outgoing", pgp_key.public_file, "ibkr-sftp", count=3, size=20_000)
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    return server, delivery, known_hosts


def _add(server, delivery, pgp_key, name: str, plain: bytes) -> None:
    path = server.root / "outgoing" / name
    encrypt_bytes(pgp_key.public_file, plain, path)
    delivery.files[name] = path.read_bytes()
    delivery.plain[name] = plain


def _config(tmp_path, setup, sftp_client_key, pgp_key, archive: Path, staging: Path) -> Path:
    server, _, known_hosts = setup
    source = sftp_toml("ibkr-sftp", server.port, server, sftp_client_key, known_hosts, delete_after_archive=True)
    return write_config(tmp_path, source, pgp_key, local_archive_toml(archive), staging, workers=1)


def _codes(archive: Path) -> dict[str, str]:
    latest = max((archive / "runs").rglob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    return {f["name"]: f["code"] for f in json.loads(latest.read_text())["files"]}


def _nothing_lost(server, delivery, big: str, archive: Path, staging: Path) -> None:
    objects, temps = local_objects(archive)
    assert temps == []  # no partial object
    assert not any(k.startswith("statements/") and big.split(".")[0] in k for k in objects)
    left = sorted(p.name for p in (server.root / "outgoing").iterdir())
    assert left == [big]  # the others were archived and deleted; the failed one stays on the server
    assert (server.root / "outgoing" / big).read_bytes() == delivery.files[big]
    assert list(staging.iterdir()) == []


def test_a_download_that_does_not_fit_in_staging(tmp_path, setup, sftp_client_key, pgp_key, small_disk, capsys):
    server, delivery, _ = setup
    big = "U7777777.DailyActivity.20261120.20261120.xml.pgp"
    _add(server, delivery, pgp_key, big, os.urandom(3 << 20))  # random: 3 MiB encrypted too
    staging = small_disk(tmp_path / "staging", "2m")
    archive = tmp_path / "archive"
    cfg = _config(tmp_path, setup, sftp_client_key, pgp_key, archive, staging)
    assert main(["--config", str(cfg), "fetch"]) == 1
    out = capsys.readouterr().out
    size = len(delivery.files[big])
    assert (f"The disk is full (No space left on device): no space is left on the file system {staging} (" in out)
    assert f"that holds the staging folder {staging}/ibreports-staging-" in out
    assert f"and {big} needs {size / (1 << 20):.1f} MiB ({size} bytes)." in out
    assert f"Free at least {size / (1 << 20):.1f} MiB on {staging}, or set [run] staging_dir" in out
    assert "Nothing was lost: the file stays on the server, no partial copy was kept" in out
    assert _codes(archive)[big] == "disk-full"
    _nothing_lost(server, delivery, big, archive, staging)

    small_disk.grow(staging, "16m")
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert_archived_exactly(local_objects(archive)[0], delivery.expected())


def test_gpg_output_that_does_not_fit_is_not_called_tampered(tmp_path, setup, sftp_client_key, pgp_key, small_disk,
                                                             capsys):
    server, delivery, _ = setup
    big = "U8888888.DailyActivity.20261121.20261121.xml.pgp"
    _add(server, delivery, pgp_key, big, os.urandom(700_000).hex().encode())  # 1.4 MB; compressed in transit
    assert len(delivery.files[big]) < 1_000_000  # the download fits in 2 MB, the statement beside it does not
    staging = small_disk(tmp_path / "staging", "2m")
    archive = tmp_path / "archive"
    cfg = _config(tmp_path, setup, sftp_client_key, pgp_key, archive, staging)
    assert main(["--config", str(cfg), "fetch"]) == 1
    out = capsys.readouterr().out
    assert "integrity" not in out and "tampered" not in out
    assert f"no space is left on the file system {staging} (" in out
    assert f"that holds gpg's output folder {staging}/ibreports-staging-" in out
    assert "and the decrypted file needs " in out
    assert "the partial plaintext was deleted, and the next run decrypts it again" in out
    assert _codes(archive)[big] == "disk-full"
    _nothing_lost(server, delivery, big, archive, staging)

    small_disk.grow(staging, "16m")
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert_archived_exactly(local_objects(archive)[0], delivery.expected())


def test_a_full_archive_disk(tmp_path, setup, sftp_client_key, pgp_key, small_disk, capsys):
    server, delivery, _ = setup
    big = "U9999999.DailyActivity.20261122.20261122.xml.pgp"
    _add(server, delivery, pgp_key, big, os.urandom(3 << 20))
    archive = small_disk(tmp_path / "archive", "2m")
    staging = tmp_path / "staging"
    cfg = _config(tmp_path, setup, sftp_client_key, pgp_key, archive, staging)
    assert main(["--config", str(cfg), "fetch"]) == 1
    out = capsys.readouterr().out
    size = len(delivery.files[big])
    key = f"encrypted/ibkr-sftp/2026/11/{big}"
    assert (f"no space is left on the file system {archive} (" in out
            and f"that holds the archive folder {archive}, and {key} needs {size / (1 << 20):.1f} MiB" in out)
    assert "or move archive.url to a larger disk" in out
    assert "no partial object was written, the file stays on the server" in out
    assert _codes(archive)[big] == "disk-full"
    _nothing_lost(server, delivery, big, archive, staging)

    small_disk.grow(archive, "16m")
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert_archived_exactly(local_objects(archive)[0], delivery.expected())


def test_a_flex_statement_that_does_not_fit(flex, tmp_path, small_disk, capsys):
    emulator, query, cfg, archive = flex
    staging = small_disk(tmp_path / "staging", "2m")
    cfg.write_text(cfg.read_text() + f'\n[run]\nstaging_dir = "{staging}"\n')
    query.body = b"<FlexQueryResponse>" + os.urandom(3 << 20).hex().encode() + b"</FlexQueryResponse>"
    assert main(["--config", str(cfg), "fetch"]) == 1
    out = capsys.readouterr().out
    assert "unexpected" not in out and "report it" not in out
    assert f"no space is left on the file system {staging} (" in out
    assert "a statement of ibkr-flex did not fit" in out
    assert "no partial statement was kept, and the next run asks for it again" in out
    assert list(staging.iterdir()) == []
    assert not (archive / "statements").exists()

    query.body = None
    small_disk.grow(staging, "16m")
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert len(list((archive / "statements").rglob("*.xml"))) == 2
