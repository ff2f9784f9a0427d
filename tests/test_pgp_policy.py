"""Signatures (recorded; required only with signer_keys) and several keys, each with its own
passphrase and its own verdict: real gpg, keys made the way users make them."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from ibreports.config import parse_config
from ibreports.errors import ConfigError, DecryptionError
from ibreports.pgp import Decryptor, KeySpec, decryptor_for, key_specs
from tests.doctorhelpers import ENCRYPTED, doctor, ftp_toml
from tests.fixtures.pgpkeys import PgpKey, encrypt_bytes, make_ecc_key

XML = b'<?xml version="1.0"?>\n<FlexQueryResponse>' + b"<Trade/>" * 300 + b"</FlexQueryResponse>\n"


@pytest.fixture(scope="module")
def ecc_key(tmp_path_factory: pytest.TempPathFactory) -> PgpKey:
    return make_ecc_key(tmp_path_factory.mktemp("ecc"), "ecc", "ecc passphrase B 4711")


def _refused(d: Decryptor, src: Path, reason: str) -> DecryptionError:
    dest = src.with_suffix(".out")
    with pytest.raises(DecryptionError) as info:
        d.decrypt(src, dest)
    assert info.value.reason == reason, info.value.message
    assert f"({reason})" in info.value.message
    assert not dest.exists()
    return info.value


# -- signatures ---------------------------------------------------------------------------------

def test_signed_by_a_key_we_do_not_hold_is_accepted_and_recorded_unverified(pgp_key, signers, tmp_path):
    src = tmp_path / "s.pgp"
    signers["stranger"].sign_encrypt(pgp_key.public_file, XML, src)
    with Decryptor([pgp_key.secret_file], pgp_key.passphrase, homes=1) as d:
        result = d.decrypt(src, tmp_path / "s.xml")
    assert result.key == pgp_key.fingerprint
    assert result.signature == f"{signers['stranger'].key_id} unverified"
    assert (tmp_path / "s.xml").read_bytes() == XML


def test_unsigned_is_recorded_as_unsigned(pgp_key, tmp_path):
    src = tmp_path / "s.pgp"
    encrypt_bytes(pgp_key.public_file, XML, src)
    with Decryptor([pgp_key.secret_file], pgp_key.passphrase, homes=1) as d:
        assert d.decrypt(src, tmp_path / "s.xml").signature == "unsigned"


def test_signer_keys_require_a_good_signature_by_a_listed_key(pgp_key, signers, tmp_path):
    ibkr, stranger = signers["ibkr"], signers["stranger"]
    good, other, unsigned = tmp_path / "good.pgp", tmp_path / "other.pgp", tmp_path / "unsigned.pgp"
    ibkr.sign_encrypt(pgp_key.public_file, XML, good)
    stranger.sign_encrypt(pgp_key.public_file, XML, other)
    encrypt_bytes(pgp_key.public_file, XML, unsigned)
    with Decryptor([pgp_key.secret_file], pgp_key.passphrase, homes=1, signer_keys=[ibkr.public_file]) as d:
        assert d.decrypt(good, tmp_path / "good.xml").signature == f"{ibkr.key_id} verified"
        assert (tmp_path / "good.xml").read_bytes() == XML
        err = _refused(d, other, "signature")
        assert stranger.key_id in err.message and ibkr.key_id in err.message
        err = _refused(d, unsigned, "signature")
        assert "not signed" in err.message and "signer_keys" in err.message
    assert other.exists() and unsigned.exists()  # the originals are the caller's: untouched


def test_signer_key_file_must_exist_and_hold_a_key(pgp_key, tmp_path):
    (tmp_path / "junk.asc").write_text("not a key\n")
    for path, words in ((tmp_path / "missing.asc", "does not exist"), (tmp_path / "junk.asc", "holds no PGP key")):
        with pytest.raises(ConfigError, match=words):
            Decryptor([pgp_key.secret_file], pgp_key.passphrase, homes=1, signer_keys=[path])


# -- several keys, each on its own --------------------------------------------------------------

class _Ref:
    """A secret reference as the config makes it (reference + where), without a config file."""

    def __init__(self, value: str, reference: str, where: str) -> None:
        self.value, self.reference, self.where = value, reference, where

    def get(self) -> str:
        return self.value


def test_ecc_key_made_by_plain_gpg_decrypts(ecc_key, tmp_path):
    src = tmp_path / "s.pgp"
    encrypt_bytes(ecc_key.public_file, XML, src, armor=True)
    with Decryptor([ecc_key.secret_file], ecc_key.passphrase, homes=1) as d:
        assert d.decrypt(src, tmp_path / "s.xml").key == ecc_key.fingerprint
    assert (tmp_path / "s.xml").read_bytes() == XML


def test_two_keys_with_their_own_passphrases_both_decrypt(pgp_key, ecc_key, tmp_path):
    rsa_file, ecc_file = tmp_path / "rsa.pgp", tmp_path / "ecc.pgp"
    encrypt_bytes(pgp_key.public_file, b"rsa statement", rsa_file)
    encrypt_bytes(ecc_key.public_file, b"ecc statement", ecc_file)
    specs = [KeySpec(pgp_key.secret_file, pgp_key.passphrase), KeySpec(ecc_key.secret_file, ecc_key.passphrase)]
    with Decryptor(specs, homes=2) as d:
        assert d.problems == []
        assert d.decrypt(rsa_file, tmp_path / "rsa.xml").key == pgp_key.fingerprint
        assert d.decrypt(ecc_file, tmp_path / "ecc.xml").key == ecc_key.fingerprint
    assert (tmp_path / "ecc.xml").read_bytes() == b"ecc statement"


def test_a_key_with_a_wrong_passphrase_fails_only_its_own_files(pgp_key, ecc_key, tmp_path):
    rsa_file, ecc_file = tmp_path / "rsa.pgp", tmp_path / "ecc.pgp"
    encrypt_bytes(pgp_key.public_file, b"rsa statement", rsa_file)
    encrypt_bytes(ecc_key.public_file, b"ecc statement", ecc_file)
    wrong = _Ref("not the passphrase", "env:OLD_KEY_PASSPHRASE", "pgp.secret_key_file[0].passphrase")
    specs = [KeySpec(pgp_key.secret_file, wrong), KeySpec(ecc_key.secret_file, ecc_key.passphrase)]
    with Decryptor(specs, homes=2, strict=False) as d:
        [problem] = d.problems
        assert problem.file == pgp_key.secret_file and problem.reason == "locked"
        assert "env:OLD_KEY_PASSPHRASE" in problem.error.message
        assert "OLD_KEY_PASSPHRASE" in problem.error.remedy and "IBREPORTS_KEY_PASSPHRASE" not in problem.error.remedy
        assert d.decrypt(ecc_file, tmp_path / "ecc.xml").key == ecc_key.fingerprint
        err = _refused(d, rsa_file, "locked")
        assert str(pgp_key.secret_file) in err.message and pgp_key.subkey_id in err.message
        assert "OLD_KEY_PASSPHRASE" in err.remedy
        # gpg stops at the first key it cannot unlock: the locked key must not hide the usable one.
        both = _encrypt_to_both(pgp_key, ecc_key, b"both", tmp_path / "both.pgp")
        assert d.decrypt(both, tmp_path / "both.xml").key == ecc_key.fingerprint
    assert "not the passphrase" not in str(problem.error)


def _encrypt_to_both(first: PgpKey, second: PgpKey, data: bytes, dest: Path) -> Path:
    home = tempfile.mkdtemp(prefix="ibr-t-")
    gpg = ["gpg", "--homedir", home, "--batch", "--quiet", "--no-autostart", "--trust-model", "always"]
    try:
        subprocess.run([*gpg, "--import", str(first.public_file), str(second.public_file)], check=True,
                       capture_output=True)
        subprocess.run([*gpg, "-r", first.fingerprint, "-r", second.fingerprint, "-o", str(dest), "-e"],
                       input=data, check=True, capture_output=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return dest


def _primary_only(key: PgpKey, dest: Path) -> Path:
    home = tempfile.mkdtemp(prefix="ibr-t-")
    gpg = ["gpg", "--homedir", home, "--batch", "--quiet", "--pinentry-mode", "loopback"]
    try:
        subprocess.run([*gpg, "--import", str(key.secret_file)], check=True, capture_output=True)
        # "FPR!" exports the primary key alone: it can sign but not decrypt.
        dest.write_bytes(subprocess.run(
            [*gpg, "--passphrase-fd", "0", "--armor", "--export-secret-keys", key.fingerprint + "!"],
            input=key.passphrase.encode() + b"\n", check=True, capture_output=True,
        ).stdout)
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    return dest


def test_sign_only_and_public_keys_beside_a_working_key(pgp_key, other_pgp_key, ecc_key, tmp_path):
    sign_only = _primary_only(other_pgp_key, tmp_path / "sign_only.asc")
    good, to_sign_only = tmp_path / "good.pgp", tmp_path / "other.pgp"
    encrypt_bytes(ecc_key.public_file, XML, good)
    encrypt_bytes(other_pgp_key.public_file, XML, to_sign_only)
    specs = [KeySpec(sign_only, other_pgp_key.passphrase), KeySpec(pgp_key.public_file, None),
             KeySpec(ecc_key.secret_file, ecc_key.passphrase)]
    with Decryptor(specs, homes=1, strict=False) as d:
        problems = {p.file: p for p in d.problems}
        assert set(problems) == {sign_only, pgp_key.public_file}
        remedy = problems[sign_only].error.remedy
        assert f"gpg --quick-add-key {other_pgp_key.fingerprint} rsa3072 encr" in remedy
        assert "it is a public key" in problems[pgp_key.public_file].error.message
        assert d.decrypt(good, tmp_path / "good.xml").key == ecc_key.fingerprint
        # The sign-only export does not even hold the encryption subkey: that file needs a key we lack.
        assert other_pgp_key.subkey_id in _refused(d, to_sign_only, "no-key").message


def test_every_broken_key_fails_only_its_own_files(pgp_key, ecc_key, tmp_path):
    """No usable key at all: each file still names the key it needs and that key's own problem."""
    rsa_file, ecc_file = tmp_path / "rsa.pgp", tmp_path / "ecc.pgp"
    encrypt_bytes(pgp_key.public_file, b"rsa", rsa_file)
    encrypt_bytes(ecc_key.public_file, b"ecc", ecc_file)
    specs = [KeySpec(pgp_key.secret_file, _Ref("wrong", "env:RSA_PASS", "pgp.passphrase")),
             KeySpec(ecc_key.secret_file, _Ref("wrong", "file:/run/ecc-pass", "pgp.secret_key_file[1].passphrase"))]
    with pytest.raises(ConfigError, match="RSA_PASS"):  # strict (doctor): the first problem
        Decryptor(specs, homes=1)
    with Decryptor(specs, homes=1, strict=False) as d:
        assert len(d.problems) == 2
        assert "RSA_PASS" in _refused(d, rsa_file, "locked").remedy
        err = _refused(d, ecc_file, "locked")
        assert "/run/ecc-pass" in err.remedy and str(ecc_key.secret_file) in err.message


def test_config_entries_with_their_own_passphrases(pgp_key, ecc_key, tmp_path, monkeypatch):
    monkeypatch.setenv("IBR_TEST_MAIN", pgp_key.passphrase)
    monkeypatch.setenv("OLD_KEY_PASSPHRASE", ecc_key.passphrase)
    cfg = parse_config(f"""
[pgp]
passphrase = "env:IBR_TEST_MAIN"
secret_key_file = ["{pgp_key.secret_file}", {{ file = "{ecc_key.secret_file}", passphrase = "env:OLD_KEY_PASSPHRASE" }}]
signer_keys = ["keys/ibkr_signing_public.asc"]
max_expansion = 50
max_output = 1073741824
""", tmp_path / "ibreports.toml")
    assert cfg.pgp.secret_key_files == [pgp_key.secret_file, ecc_key.secret_file]
    assert cfg.pgp.signer_keys == [tmp_path / "keys/ibkr_signing_public.asc"]
    assert (cfg.pgp.max_expansion, cfg.pgp.max_output) == (50.0, 1 << 30)
    specs = key_specs(cfg.pgp)
    assert specs[0].passphrase.reference == "env:IBR_TEST_MAIN"
    assert specs[1].passphrase.reference == "env:OLD_KEY_PASSPHRASE"
    cfg.pgp.signer_keys = []
    src = tmp_path / "ecc.pgp"
    encrypt_bytes(ecc_key.public_file, XML, src)
    with decryptor_for(cfg.pgp, homes=1) as d:
        assert d.problems == [] and d.decrypt(src, tmp_path / "ecc.xml").key == ecc_key.fingerprint


def test_unset_passphrase_variable_fails_only_that_key(pgp_key, ecc_key, tmp_path, monkeypatch):
    monkeypatch.delenv("OLD_KEY_PASSPHRASE", raising=False)
    cfg = parse_config(f"""
[pgp]
passphrase = "{ecc_key.passphrase}"
secret_key_file = [{{ file = "{pgp_key.secret_file}", passphrase = "env:OLD_KEY_PASSPHRASE" }}, "{ecc_key.secret_file}"]
""", tmp_path / "ibreports.toml")
    with decryptor_for(cfg.pgp, homes=1) as d:
        [problem] = d.problems
        assert problem.file == pgp_key.secret_file
        assert "OLD_KEY_PASSPHRASE" in problem.error.message


@pytest.mark.parametrize("text, words", [
    ('secret_key_file = [{ path = "k.asc" }]', "unknown key 'pgp.secret_key_file[0].path'"),
    ('secret_key_file = [{ passphrase = "env:X" }]', "pgp.secret_key_file[0].file"),
    ("secret_key_file = [3]", "pgp.secret_key_file[0]"),
    ("signer_keys = \"k.asc\"", "pgp.signer_keys"),
    ("max_expansion = 0.5", "pgp.max_expansion"),
    ("max_output = 0", "pgp.max_output"),
])
def test_config_errors_name_the_key(tmp_path, text, words):
    with pytest.raises(ConfigError) as info:
        parse_config(f"[pgp]\n{text}\n", tmp_path / "ibreports.toml")
    assert words in info.value.message


# -- doctor, the run record's table ---------------------------------------------------------------

def test_doctor_checks_each_key_on_its_own_and_each_signer_file(tmp_path, ftp_factory, pgp_key, other_pgp_key,
                                                                 signers, capsys, monkeypatch):
    ftp = ftp_factory()
    signers["ibkr"].sign_encrypt(pgp_key.public_file, XML, ftp.root / "outgoing" / ENCRYPTED)
    monkeypatch.setenv("OLD_KEY_PASSPHRASE", "not the old passphrase")
    cfg = tmp_path / "ibreports.toml"
    cfg.write_text(ftp_toml(ftp) + f"""
[pgp]
passphrase = "{pgp_key.passphrase}"
secret_key_file = ["{pgp_key.secret_file}", {{ file = "{other_pgp_key.secret_file}", passphrase = "env:OLD_KEY_PASSPHRASE" }}]
signer_keys = ["{signers['ibkr'].public_file}", "keys/missing_signing_public.asc"]

[archive]
url = "{tmp_path / 'archive'}"
""")
    code, report = doctor(cfg, capsys)
    pgp = report["pgp"]
    assert code == 2
    assert pgp["signatures"]["status"] == "ok" and "is required" in pgp["signatures"]["detail"]
    assert pgp[f"signer {signers['ibkr'].public_file.name}"]["status"] == "ok"
    missing = pgp["signer missing_signing_public.asc"]
    assert missing["status"] == "FAIL" and "does not exist" in missing["cause"]
    assert pgp[f"key {pgp_key.secret_file.name}"]["status"] == "ok"
    old = pgp[f"key {other_pgp_key.secret_file.name}"]
    assert old["status"] == "FAIL" and "does not unlock" in old["cause"]
    assert "OLD_KEY_PASSPHRASE" in old["fix"] and "IBREPORTS_KEY_PASSPHRASE" not in old["fix"]
    sample = pgp["sample ibkr-ftp"]
    assert sample["status"] == "ok" and f"signature: {signers['ibkr'].key_id}" in sample["detail"]


def test_signature_is_a_column_of_the_artifact_table():
    from ibreports.report import FileOutcome, RunReport, table_rows

    row = FileOutcome("s", "U1.A.20261101.20261101.xml.pgp", 1, 0.0, "U1", "2026-11-01", "archived",
                      signature="0123456789ABCDEF unverified")
    assert table_rows(RunReport(run_id="r", started="t", files=[row]))[0]["signature"] == "0123456789ABCDEF unverified"
    record = RunReport(run_id="r", started="t", files=[row]).to_record()
    assert RunReport.from_dict(__import__("json").loads(record)).files[0].signature == "0123456789ABCDEF unverified"
