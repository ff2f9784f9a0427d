"""PGP trouble through `ibreports fetch --debug` (a subprocess with its own TMPDIR): tampered byte,
no integrity protection, another key, truncated, zero bytes, a decompression bomb, and a valid
message signed by a key we do not know (accepted, recorded as unverified; refused once
[pgp] signer_keys is set). Each bad file: a clear reason, the encrypted original kept, no
statement; the good ones archived; exit 1; no plaintext anywhere in staging or TMPDIR.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


from tests.fixtures.pgpkeys import encrypt_bytes, make_bomb
from tests.reliability import (
    cli_env, files_containing, local_archive_toml, local_objects, run_cli, sftp_toml, write_config,
)

MARKER = b"PGP-SCENARIO-PLAINTEXT-7f3a"
BODY = b"<FlexQueryResponse>" + MARKER + b"<Trade/>" * 300 + b"</FlexQueryResponse>\n"


def test_bad_messages_fail_alone_and_leave_no_plaintext(tmp_path, sshd_factory, sftp_client_key, pgp_key,
                                                        other_pgp_key, signers):
    server = sshd_factory([sftp_client_key[1]])
    out_dir = server.root / "outgoing"
    good = tmp_path / "good.pgp"
    encrypt_bytes(pgp_key.public_file, BODY + os.urandom(20_000).hex().encode(), good)
    body = good.read_bytes()
    tampered, key_packet = bytearray(body), bytearray(body)
    tampered[len(body) * 3 // 4] ^= 0x01  # in the encrypted data
    key_packet[100] ^= 0x01  # inside the RSA-encrypted session key (PKESK packet)
    cases = {
        "Good": body,
        "Tampered": bytes(tampered),
        "TamperedKeyPacket": bytes(key_packet),
        "Truncated": body[: len(body) // 2],
        "Empty": b"",
    }
    for kind, data in cases.items():
        (out_dir / f"U2222222.{kind}.20261106.20261106.xml.pgp").write_bytes(data)
    encrypt_bytes(other_pgp_key.public_file, BODY, out_dir / "U2222222.OtherKey.20261106.20261106.xml.pgp")
    encrypt_bytes(pgp_key.public_file, BODY, out_dir / "U2222222.NoMdc.20261106.20261106.xml.pgp", mdc=False)
    stranger = signers["stranger"]
    stranger.sign_encrypt(pgp_key.public_file, BODY, out_dir / "U2222222.SignedByStranger.20261106.20261106.xml.pgp")
    make_bomb(pgp_key.public_file, out_dir / "U2222222.Bomb.20261106.20261106.xml.pgp", mib=64)

    tmpdir = Path(tempfile.mkdtemp(prefix="ibr-pgp-", dir="/tmp"))
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    source = sftp_toml("ibkr-sftp", server.port, server, sftp_client_key, server.write_known_hosts(tmp_path / "kh"))
    cfg = write_config(tmp_path, source, pgp_key, local_archive_toml(archive), staging)
    cfg.write_text(cfg.read_text().replace("[pgp]\n", "[pgp]\nmax_output = 16777216\n"))  # 16 MiB: the bomb holds 64
    try:
        result = run_cli(cfg, cli_env(pgp_key, sftp_client_key, tmpdir), "--debug", "fetch")
        assert result.returncode == 1, result.stderr.decode()[-3000:]
        assert b"Traceback" not in result.stderr
        record = json.loads(next((archive / "runs").rglob("*.json")).read_text())
        outcome = {f["name"].split(".")[1]: f for f in record["files"]}
        objects, temps = local_objects(archive)
        expected_reasons = {"Tampered": "integrity", "TamperedKeyPacket": "integrity", "Truncated": ("truncated", "corrupted"), "Empty": "empty",
                            "OtherKey": other_pgp_key.subkey_id, "NoMdc": "integrity protection",
                            "Bomb": "(oversized)"}
        wrong_reasons = {}
        for kind, words in expected_reasons.items():
            name = f"U2222222.{kind}.20261106.20261106.xml"
            assert outcome[kind]["outcome"] == "failed", outcome[kind]
            words = (words,) if isinstance(words, str) else words
            if not any(w.lower() in outcome[kind]["reason"].lower() for w in words):
                wrong_reasons[kind] = outcome[kind]["reason"]
            assert f"encrypted/ibkr-sftp/2026/11/{name}.pgp" in objects  # the evidence is kept
            assert f"statements/U2222222/2026/11/{name}" not in objects
        assert outcome["Good"]["outcome"] == "archived"
        assert objects["statements/U2222222/2026/11/U2222222.Good.20261106.20261106.xml"].startswith(BODY)
        # A signature we cannot verify proves nothing either way; the MDC guards integrity: archived,
        # and the signature recorded in the run record.
        assert outcome["SignedByStranger"]["outcome"] == "archived", outcome["SignedByStranger"]
        assert outcome["SignedByStranger"]["signature"] == f"{stranger.key_id} unverified"
        assert outcome["Good"]["signature"] == "unsigned"
        assert objects["statements/U2222222/2026/11/U2222222.SignedByStranger.20261106.20261106.xml"] == BODY
        assert temps == [] and list(staging.iterdir()) == []
        assert files_containing([staging, tmpdir], [MARKER]) == []
        assert not list(tmpdir.iterdir())  # the GnuPG homes were removed too
        output = result.stdout + result.stderr
        assert MARKER not in output and pgp_key.passphrase.encode() not in output
        assert wrong_reasons == {}, "\n".join(f"{k}: {v}" for k, v in wrong_reasons.items())  # each names its real cause
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def test_signer_keys_refuse_unsigned_and_foreign_signatures(tmp_path, sshd_factory, sftp_client_key, pgp_key, signers):
    server = sshd_factory([sftp_client_key[1]])
    out_dir = server.root / "outgoing"
    ibkr, stranger = signers["ibkr"], signers["stranger"]
    ibkr.sign_encrypt(pgp_key.public_file, BODY, out_dir / "U3333333.Signed.20261106.20261106.xml.pgp")
    stranger.sign_encrypt(pgp_key.public_file, BODY, out_dir / "U3333333.Stranger.20261106.20261106.xml.pgp")
    encrypt_bytes(pgp_key.public_file, BODY, out_dir / "U3333333.Unsigned.20261106.20261106.xml.pgp")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "ibkr_signing_public.asc").write_bytes(ibkr.public_file.read_bytes())
    tmpdir = Path(tempfile.mkdtemp(prefix="ibr-pgp-", dir="/tmp"))
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    source = sftp_toml("ibkr-sftp", server.port, server, sftp_client_key, server.write_known_hosts(tmp_path / "kh"))
    cfg = write_config(tmp_path, source, pgp_key, local_archive_toml(archive), staging)
    cfg.write_text(cfg.read_text().replace("[pgp]\n", '[pgp]\nsigner_keys = ["keys/ibkr_signing_public.asc"]\n'))
    try:
        result = run_cli(cfg, cli_env(pgp_key, sftp_client_key, tmpdir), "fetch")
        assert result.returncode == 1, result.stderr.decode()[-3000:]
        record = json.loads(next((archive / "runs").rglob("*.json")).read_text())
        outcome = {f["name"].split(".")[1]: f for f in record["files"]}
        objects, _ = local_objects(archive)
        assert outcome["Signed"]["outcome"] == "archived"
        assert outcome["Signed"]["signature"] == f"{ibkr.key_id} verified"
        for kind in ("Stranger", "Unsigned"):
            name = f"U3333333.{kind}.20261106.20261106.xml"
            assert outcome[kind]["outcome"] == "failed", outcome[kind]
            assert "(signature)" in outcome[kind]["reason"]
            assert f"encrypted/ibkr-sftp/2026/11/{name}.pgp" in objects  # the original is kept
            assert f"statements/U3333333/2026/11/{name}" not in objects
        assert stranger.key_id in outcome["Stranger"]["reason"]
        assert b"Stranger" in result.stdout and b"Unsigned" in result.stdout  # each named
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def test_a_key_with_a_wrong_passphrase_fails_only_its_files_and_is_reported_once(
        tmp_path, sshd_factory, sftp_client_key, pgp_key, other_pgp_key):
    server = sshd_factory([sftp_client_key[1]])
    out_dir = server.root / "outgoing"
    for day in (1, 2):
        encrypt_bytes(pgp_key.public_file, BODY, out_dir / f"U4444444.Current.2026110{day}.2026110{day}.xml.pgp")
        encrypt_bytes(other_pgp_key.public_file, BODY, out_dir / f"U4444444.Retired.2026110{day}.2026110{day}.xml.pgp")
    tmpdir = Path(tempfile.mkdtemp(prefix="ibr-pgp-", dir="/tmp"))
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    source = sftp_toml("ibkr-sftp", server.port, server, sftp_client_key, server.write_known_hosts(tmp_path / "kh"))
    cfg = write_config(tmp_path, source, pgp_key, local_archive_toml(archive), staging)
    cfg.write_text(cfg.read_text().replace(
        f'secret_key_file = "{pgp_key.secret_file}"',
        f'secret_key_file = ["{pgp_key.secret_file}", '
        f'{{ file = "{other_pgp_key.secret_file}", passphrase = "env:OLD_KEY_PASSPHRASE" }}]'))
    try:
        env = cli_env(pgp_key, sftp_client_key, tmpdir, OLD_KEY_PASSPHRASE="not the retired key's passphrase")
        result = run_cli(cfg, env, "fetch")
        assert result.returncode == 1, result.stderr.decode()[-3000:]
        record = json.loads(next((archive / "runs").rglob("*.json")).read_text())
        for row in record["files"]:
            if ".Current." in row["name"]:
                assert row["outcome"] == "archived", row
            else:
                assert row["outcome"] == "failed" and "(locked)" in row["reason"], row
                assert "OLD_KEY_PASSPHRASE" in row["reason"] and "IBREPORTS_KEY_PASSPHRASE" not in row["reason"]
                assert str(other_pgp_key.secret_file) in row["reason"]
        # The key's problem once, at start; each of its files then fails naming it.
        assert result.stderr.decode().count(f"PGP key in {other_pgp_key.secret_file} cannot be used") == 1
        assert b"not the retired key's passphrase" not in result.stdout + result.stderr
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
