"""Strict decryption with the real gpg binary: what is accepted, what is refused, and why."""

from __future__ import annotations

import gc
import os
import shutil
import stat
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ibreports.errors import ConfigError, DecryptionError
from ibreports.pgp import Decryptor, armor_fingerprints, is_openpgp, recipients
from tests.fixtures.pgpkeys import PgpKey, encrypt_bytes
from tests.waiting import eventually

XML = b'<?xml version="1.0"?>\n<FlexQueryResponse queryName="DailyActivity">' + b"<Trade/>" * 400 + b"</FlexQueryResponse>\n"


@pytest.fixture(scope="module")
def decryptor(pgp_key: PgpKey) -> Decryptor:
    with Decryptor([pgp_key.secret_file], pgp_key.passphrase, homes=2) as d:
        yield d


def _refused(decryptor: Decryptor, src: Path, reason: str) -> DecryptionError:
    dest = src.parent / "out.xml"
    before = set(src.parent.iterdir())
    with pytest.raises(DecryptionError) as info:
        decryptor.decrypt(src, dest)
    assert info.value.reason == reason, info.value.message
    assert not dest.exists()  # no plaintext left behind, not even a partial one
    assert set(src.parent.iterdir()) == before
    return info.value


@pytest.mark.parametrize("armor", [False, True])
def test_round_trip(decryptor: Decryptor, pgp_key: PgpKey, tmp_path: Path, armor: bool) -> None:
    src, dest = tmp_path / "s.xml.pgp", tmp_path / "s.xml"
    encrypt_bytes(pgp_key.public_file, XML, src, armor=armor)
    assert is_openpgp(src)
    old_umask = os.umask(0)  # 0600 must come from the code, not from a friendly umask
    try:
        assert decryptor.decrypt(src, dest).key == pgp_key.fingerprint
    finally:
        os.umask(old_umask)
    assert dest.read_bytes() == XML
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600


def test_existing_dest_is_replaced_by_a_private_file(decryptor: Decryptor, pgp_key: PgpKey, tmp_path: Path) -> None:
    src, dest = tmp_path / "s.pgp", tmp_path / "s.xml"
    encrypt_bytes(pgp_key.public_file, b"new", src)
    dest.write_bytes(b"old contents that are longer")
    dest.chmod(0o644)
    decryptor.decrypt(src, dest)
    assert dest.read_bytes() == b"new" and stat.S_IMODE(dest.stat().st_mode) == 0o600


def test_properties_name_our_keys(decryptor: Decryptor, pgp_key: PgpKey) -> None:
    assert decryptor.fingerprints == [pgp_key.fingerprint]
    assert set(decryptor.key_ids) == {pgp_key.subkey_id, pgp_key.fingerprint[-16:]}


def test_flipped_byte_is_refused(decryptor: Decryptor, pgp_key: PgpKey, tmp_path: Path) -> None:
    src = tmp_path / "s.pgp"
    encrypt_bytes(pgp_key.public_file, XML, src)
    data = bytearray(src.read_bytes())
    data[-5] ^= 0x01  # inside the encrypted body, near the MDC: gpg writes plaintext, then fails
    src.write_bytes(bytes(data))
    err = _refused(decryptor, src, "integrity")
    assert "integrity check failed" in err.message


def test_flipped_byte_early_in_body_is_refused(decryptor: Decryptor, pgp_key: PgpKey, tmp_path: Path) -> None:
    src = tmp_path / "s.pgp"
    encrypt_bytes(pgp_key.public_file, XML, src)
    data = bytearray(src.read_bytes())
    data[len(data) // 2 + 150] ^= 0x40
    src.write_bytes(bytes(data))
    _refused(decryptor, src, "integrity")


def test_flipped_byte_in_the_session_key_packet_is_refused_as_corrupted(
        decryptor: Decryptor, pgp_key: PgpKey, tmp_path: Path) -> None:
    src = tmp_path / "s.pgp"
    encrypt_bytes(pgp_key.public_file, XML, src)
    data = bytearray(src.read_bytes())
    data[100] ^= 0x01  # inside the RSA-encrypted session key (PKESK packet, ~270 bytes)
    src.write_bytes(bytes(data))
    err = _refused(decryptor, src, "integrity")  # the passphrase was proven at start: not "locked"
    assert "session key does not decrypt with our key" in err.message
    assert "PASSPHRASE" not in err.remedy


def test_message_without_mdc_is_refused(decryptor: Decryptor, pgp_key: PgpKey, tmp_path: Path) -> None:
    src = tmp_path / "s.pgp"
    encrypt_bytes(pgp_key.public_file, XML, src, mdc=False)
    data = src.read_bytes()
    assert data[0] == 0x85  # old-format PKESK with a two-byte length
    second = data[3 + int.from_bytes(data[1:3], "big")]
    assert second in (0xC9, 0xA4, 0xA5, 0xA6, 0xA7)  # then an SED packet (tag 9), not SEIPD (tag 18)
    err = _refused(decryptor, src, "no-mdc")
    assert "no integrity protection (MDC)" in err.message


def test_message_for_another_key_names_the_keys(decryptor: Decryptor, other_pgp_key: PgpKey, pgp_key: PgpKey, tmp_path: Path) -> None:
    src = tmp_path / "s.pgp"
    encrypt_bytes(other_pgp_key.public_file, XML, src)
    assert recipients(src) == [other_pgp_key.subkey_id]
    err = _refused(decryptor, src, "no-key")
    assert "not encrypted to any key we hold" in err.message
    assert other_pgp_key.subkey_id in err.message and pgp_key.subkey_id in err.message
    assert "secret_key_file" in err.remedy


@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_truncated_message_is_refused(decryptor: Decryptor, pgp_key: PgpKey, tmp_path: Path, keep: float) -> None:
    src = tmp_path / "s.pgp"
    encrypt_bytes(pgp_key.public_file, XML, src)
    data = src.read_bytes()
    src.write_bytes(data[: int(len(data) * keep)])
    err = _refused(decryptor, src, "malformed")
    assert "truncated or not an OpenPGP message" in err.message


def test_empty_file_is_refused(decryptor: Decryptor, tmp_path: Path) -> None:
    src = tmp_path / "s.pgp"
    src.write_bytes(b"")
    assert not is_openpgp(src)
    assert "empty" in _refused(decryptor, src, "empty").message


def test_plain_xml_is_refused(decryptor: Decryptor, tmp_path: Path) -> None:
    src = tmp_path / "s.xml.pgp"
    src.write_bytes(XML)
    assert not is_openpgp(src)
    _refused(decryptor, src, "malformed")


def test_unencrypted_literal_packet_is_refused(decryptor: Decryptor, tmp_path: Path) -> None:
    # An OpenPGP literal packet "decrypts" with exit code 0 but without any encryption or MDC.
    src = tmp_path / "s.pgp"
    body = b"b\x00\x00\x00\x00\x00" + XML
    src.write_bytes(bytes([0xCB, 0xFF]) + len(body).to_bytes(4, "big") + body)
    assert is_openpgp(src)
    _refused(decryptor, src, "failed")


def test_is_openpgp_recognises_packet_headers(tmp_path: Path) -> None:
    f = tmp_path / "f"
    cases = {
        b"\x85\x01\x0c\x03": True,  # old format PKESK
        b"\xc1\x4c\x03": True,  # new format PKESK
        b"\x8c\x0d\x04": True,  # old format SKESK
        b"\xd2\x59\x01": True,  # new format SEIPD
        b"  \n-----BEGIN PGP MESSAGE-----\n": True,
        b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n": False,
        b"\x99\x01\x0d": False,  # public key packet: a key, not a message
        b"PK\x03\x04": False,
        b"\xef\xbb\xbf<?xml": False,
    }
    for head, expected in cases.items():
        f.write_bytes(head + b"\x00" * 16)
        assert is_openpgp(f) is expected, head


def test_wrong_passphrase_fails_at_start(pgp_key: PgpKey) -> None:
    with pytest.raises(ConfigError) as info:
        Decryptor([pgp_key.secret_file], "not the passphrase", homes=1)
    assert str(pgp_key.secret_file) in info.value.message
    assert "IBREPORTS_KEY_PASSPHRASE" in info.value.remedy
    assert "not the passphrase" not in str(info.value)


def test_missing_passphrase_fails_at_start(pgp_key: PgpKey) -> None:
    with pytest.raises(ConfigError, match="no passphrase is set"):
        Decryptor([pgp_key.secret_file], None, homes=1)


def test_public_key_file_is_not_a_secret_key(pgp_key: PgpKey) -> None:
    with pytest.raises(ConfigError, match="it is a public key"):
        Decryptor([pgp_key.public_file], pgp_key.passphrase, homes=1)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Decryptor([tmp_path / "nope.asc"], "x" * 12)


def test_rotation_old_key_still_decrypts(pgp_key: PgpKey, other_pgp_key: PgpKey, tmp_path: Path) -> None:
    old, new = tmp_path / "old.pgp", tmp_path / "new.pgp"
    encrypt_bytes(other_pgp_key.public_file, b"old statement", old)
    encrypt_bytes(pgp_key.public_file, b"new statement", new)
    with Decryptor([pgp_key.secret_file, other_pgp_key.secret_file], pgp_key.passphrase, homes=1) as d:
        assert sorted(d.fingerprints) == sorted([pgp_key.fingerprint, other_pgp_key.fingerprint])
        assert d.decrypt(old, tmp_path / "old.xml").key == other_pgp_key.fingerprint
        assert d.decrypt(new, tmp_path / "new.xml").key == pgp_key.fingerprint
    assert (tmp_path / "old.xml").read_bytes() == b"old statement"
    assert (tmp_path / "new.xml").read_bytes() == b"new statement"


def test_parallel_decrypt(decryptor: Decryptor, pgp_key: PgpKey, tmp_path: Path) -> None:
    sources = []
    for i in range(24):
        src = tmp_path / f"{i}.pgp"
        encrypt_bytes(pgp_key.public_file, XML + str(i).encode(), src)
        sources.append(src)
    with ThreadPoolExecutor(4) as pool:
        used = list(pool.map(lambda s: decryptor.decrypt(s, s.with_suffix(".xml")).key, sources))
    assert used == [pgp_key.fingerprint] * 24
    for i, src in enumerate(sources):
        assert src.with_suffix(".xml").read_bytes() == XML + str(i).encode()


def _agent_pids(home: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and b"gpg-agent" in cmdline[0] and str(home).encode() in cmdline:
            pids.append(int(proc.name))
    return pids


def test_close_stops_agents_and_removes_homes(pgp_key: PgpKey, tmp_path: Path) -> None:
    d = Decryptor([pgp_key.secret_file], pgp_key.passphrase, homes=2)
    homes = d.homes
    assert all(stat.S_IMODE(h.stat().st_mode) == 0o700 for h in homes)
    assert all(_agent_pids(h) for h in homes)  # the check below can fail: agents did run
    d.close()
    d.close()  # idempotent
    assert eventually(lambda: not any(_agent_pids(h) for h in homes))
    assert not any(h.exists() for h in homes)
    with pytest.raises(DecryptionError, match="closed"):
        d.decrypt(pgp_key.public_file, tmp_path / "x")  # armored but not a message: still refused


def test_garbage_collection_cleans_up(pgp_key: PgpKey) -> None:
    d = Decryptor([pgp_key.secret_file], pgp_key.passphrase, homes=1)
    homes = d.homes
    del d
    gc.collect()
    assert not any(h.exists() for h in homes)


def test_fingerprint_helpers(pgp_key: PgpKey, tmp_path: Path) -> None:
    assert armor_fingerprints(pgp_key.public_file) == [pgp_key.fingerprint]
    assert armor_fingerprints(pgp_key.secret_file) == [pgp_key.fingerprint]
    plain = tmp_path / "p.xml"
    plain.write_bytes(XML)
    assert armor_fingerprints(plain) == []
    assert recipients(plain) == []
    with pytest.raises(ConfigError):
        armor_fingerprints(tmp_path / "missing.asc")


def test_key_without_encryption_subkey_is_refused_at_start(pgp_key: PgpKey, tmp_path: Path) -> None:
    home = tempfile.mkdtemp(prefix="ibr-t-")
    gpg = ["gpg", "--homedir", home, "--batch", "--quiet", "--pinentry-mode", "loopback"]
    try:
        subprocess.run([*gpg, "--import", str(pgp_key.secret_file)], check=True, capture_output=True)
        # "FPR!" exports the primary key alone: it can sign but not decrypt.
        primary_only = subprocess.run(
            [*gpg, "--passphrase-fd", "0", "--armor", "--export-secret-keys", pgp_key.fingerprint + "!"],
            input=pgp_key.passphrase.encode() + b"\n", check=True, capture_output=True,
        ).stdout
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    key_file = tmp_path / "primary_only.asc"
    key_file.write_bytes(primary_only)
    with pytest.raises(ConfigError, match="no secret encryption subkey"):
        Decryptor([key_file], pgp_key.passphrase, homes=1)


def test_armored_garbage_is_refused(decryptor: Decryptor, tmp_path: Path) -> None:
    src = tmp_path / "s.asc"
    src.write_text("-----BEGIN PGP MESSAGE-----\n\nbm90IGEgbWVzc2FnZQ==\n=AAAA\n-----END PGP MESSAGE-----\n")
    assert is_openpgp(src)
    _refused(decryptor, src, "malformed")
