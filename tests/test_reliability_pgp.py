"""PGP trouble through `ibreports fetch --debug` (a subprocess with its own TMPDIR): tampered byte,
no integrity protection, another key, truncated, zero bytes, and a valid message signed by a key
we do not know (refused by the strict rule). Each bad file: a clear reason, the encrypted original
kept, no statement; the good ones archived; exit 1; no plaintext anywhere in staging or TMPDIR.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


from tests.fixtures.pgpkeys import encrypt_bytes
from tests.reliability import (
    cli_env, files_containing, local_archive_toml, local_objects, run_cli, sftp_toml, write_config,
)

MARKER = b"PGP-SCENARIO-PLAINTEXT-7f3a"
BODY = b"<FlexQueryResponse>" + MARKER + b"<Trade/>" * 300 + b"</FlexQueryResponse>\n"


def signed_by_unknown_key(public_file: Path, dest: Path) -> None:
    """Sign BODY with a fresh key nobody knows, encrypt it to ``public_file``."""
    home = Path(tempfile.mkdtemp(prefix="ibr-sig-", dir="/tmp"))
    gpg = ["gpg", "--batch", "--no-tty", "--quiet", "--homedir", str(home), "--pinentry-mode", "loopback",
           "--passphrase", ""]
    try:
        subprocess.run([*gpg, "--quick-gen-key", "stranger@example.invalid", "ed25519", "sign", "never"],
                       check=True, capture_output=True, timeout=60)
        subprocess.run([*gpg, "--import", str(public_file)], check=True, capture_output=True, timeout=60)
        subprocess.run([*gpg, "--trust-model", "always", "--sign", "--encrypt", "--local-user", "stranger@example.invalid",
                        "--recipient", _fingerprint(public_file), "--output", str(dest)],
                       input=BODY, check=True, capture_output=True, timeout=60)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def _fingerprint(public_file: Path) -> str:
    out = subprocess.run(["gpg", "--batch", "--with-colons", "--show-keys", str(public_file)],
                         capture_output=True, check=True, text=True).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def test_bad_messages_fail_alone_and_leave_no_plaintext(tmp_path, sshd_factory, sftp_client_key, pgp_key,
                                                        other_pgp_key):
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
    signed_by_unknown_key(pgp_key.public_file, out_dir / "U2222222.SignedByStranger.20261106.20261106.xml.pgp")

    tmpdir = Path(tempfile.mkdtemp(prefix="ibr-pgp-", dir="/tmp"))
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    source = sftp_toml("ibkr-sftp", server.port, server, sftp_client_key, server.write_known_hosts(tmp_path / "kh"))
    cfg = write_config(tmp_path, source, pgp_key, local_archive_toml(archive), staging)
    try:
        result = run_cli(cfg, cli_env(pgp_key, sftp_client_key, tmpdir), "--debug", "fetch")
        assert result.returncode == 1, result.stderr.decode()[-3000:]
        assert b"Traceback" not in result.stderr
        record = json.loads(next((archive / "runs").rglob("*.json")).read_text())
        outcome = {f["name"].split(".")[1]: f for f in record["files"]}
        objects, temps = local_objects(archive)
        expected_reasons = {"Tampered": "integrity", "TamperedKeyPacket": "integrity", "Truncated": ("truncated", "corrupted"), "Empty": "empty",
                            "OtherKey": other_pgp_key.subkey_id, "NoMdc": "integrity protection"}
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
        # Strict rule (DESIGN.md): gpg exits 2 for a signature it cannot check, so the file is refused,
        # with that reason rather than "tampered"; the evidence is kept.
        stranger = "U2222222.SignedByStranger.20261106.20261106.xml"
        assert outcome["SignedByStranger"]["outcome"] == "failed", outcome["SignedByStranger"]
        if "signed" not in outcome["SignedByStranger"]["reason"].lower():
            wrong_reasons["SignedByStranger"] = outcome["SignedByStranger"]["reason"]
        assert f"encrypted/ibkr-sftp/2026/11/{stranger}.pgp" in objects
        assert f"statements/U2222222/2026/11/{stranger}" not in objects
        assert temps == [] and list(staging.iterdir()) == []
        assert files_containing([staging, tmpdir], [MARKER]) == []
        assert not list(tmpdir.iterdir())  # the GnuPG homes were removed too
        output = result.stdout + result.stderr
        assert MARKER not in output and pgp_key.passphrase.encode() not in output
        assert wrong_reasons == {}, "\n".join(f"{k}: {v}" for k, v in wrong_reasons.items())  # each names its real cause
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
