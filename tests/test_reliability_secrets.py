"""Secrets: `ibreports --debug fetch` through every failure path above never prints the key passphrase,
the FTP password, private-key content or plaintext statement content (all captured output and every
run record are searched).
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path


from tests.faultproxy import FaultProxy, HttpFault, Rule
from tests.fixtures.pgpkeys import encrypt_bytes
from tests.fixtures.s3 import s3_test_client
from tests.reliability import (
    cli_env, ftp_toml, ftp_via_proxy, local_archive_toml, run_cli, s3_archive_toml, seed, sftp_toml, write_config,
)

INLINE_PASSWORD = "inline-ftp-Secret-4f9c1e"


def key_fragments(path: Path) -> list[bytes]:
    """Pieces of a private key file that must never be printed: each base64 line, and its decoded bytes."""
    pieces = []
    for line in path.read_bytes().splitlines():
        line = line.strip()
        if len(line) >= 40 and not line.startswith(b"-----") and b":" not in line:
            pieces.append(line[:40])
            try:
                pieces.append(base64.b64decode(line + b"=" * (-len(line) % 4))[:24])
            except ValueError:
                pass
    return pieces


def test_debug_output_and_run_records_hold_no_secret(tmp_path, sshd_factory, ftp_factory, sftp_client_key, pgp_key,
                                                     other_pgp_key, s3_server, s3_bucket, request):
    sshd = sshd_factory([sftp_client_key[1]])
    ftp = ftp_factory()
    sftp_delivery = seed(sshd.root / "outgoing", pgp_key.public_file, "ibkr-sftp", count=4, size=5000, plain_every=4)
    ftp_delivery = seed(ftp.root / "outgoing", pgp_key.public_file, "ibkr-ftp", count=3, size=200_000)
    out_dir = sshd.root / "outgoing"
    marker = b"PLAINTEXT-BAD-FILES-91b2"
    encrypt_bytes(other_pgp_key.public_file, marker, out_dir / "U3333333.OtherKey.20261107.20261107.xml.pgp")
    encrypt_bytes(pgp_key.public_file, marker * 50, out_dir / "U3333333.NoMdc.20261107.20261107.xml.pgp", mdc=False)
    (out_dir / "bad\nname.csv").write_bytes(marker)
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts")
    tmpdir = Path(tempfile.mkdtemp(prefix="ibr-sec-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(tmpdir, ignore_errors=True))
    base_env = cli_env(pgp_key, sftp_client_key, tmpdir, TEST_FTP_PASSWORD=ftp.password)
    outputs: list[bytes] = []

    def run(name: str, sources: str, archive: str, env: dict[str, str], *codes: int) -> None:
        folder = tmp_path / name
        folder.mkdir()
        cfg = write_config(folder, sources, pgp_key, archive, folder / "staging")
        result = run_cli(cfg, env, "--debug", "fetch")
        assert result.returncode in codes, (name, result.stdout.decode()[-1500:], result.stderr.decode()[-1500:])
        outputs.append(result.stdout + result.stderr)

    sftp = sftp_toml("ibkr-sftp", sshd.port, sshd, sftp_client_key, known_hosts)
    with FaultProxy(max_seconds=240) as proxy:
        # FTP data channel dropped mid-file and S3 throttled: the retry paths log at DEBUG.
        reset, slow_down = Rule(after=50_000, action="reset", skip=1), HttpFault(status=503, code="SlowDown", times=2)
        control_port = ftp_via_proxy(proxy, ftp, reset)
        s3 = proxy.route(int(s3_server.rsplit(":", 1)[1]))
        s3.http.append(slow_down)
        ftp_src = ftp_toml("ibkr-ftp", "127.0.0.2", control_port, ftp)
        run("mixed", sftp + ftp_src, s3_archive_toml(f"http://127.0.0.1:{s3.port}", s3_bucket), base_env, 1)
        assert reset.fired == 1 and slow_down.fired == 2  # the retry paths really ran
        # Every PUT refused: the archive names the permission, never the credentials.
        s3.http.append(HttpFault(status=403, code="AccessDenied", times=None))
        run("denied", sftp, s3_archive_toml(f"http://127.0.0.1:{s3.port}", s3_bucket, prefix="denied"), base_env, 2)  # write refused: configuration
    local = local_archive_toml(tmp_path / "archive")
    run("ok-local", sftp, local, base_env, 1)
    # Each file fails to decrypt (1); the key file cannot be unlocked: a setting to fix (2), not a server problem.
    run("wrong-pgp-passphrase", sftp, local, {**base_env, "TEST_PGP_PASSPHRASE": "wrong pgp passphrase 1"}, 1)
    run("wrong-ssh-passphrase", sftp, local, {**base_env, "TEST_SSH_PASSPHRASE": "wrong ssh passphrase 2"}, 2)
    run("wrong-ftp-password", ftp_toml("ibkr-ftp", ftp.host, ftp.port, ftp), local,
        {**base_env, "TEST_FTP_PASSWORD": "wrong-ftp-password-3"}, 3)
    inline = ftp_toml("ibkr-ftp", ftp.host, ftp.port, ftp).replace('"env:TEST_FTP_PASSWORD"', f'"{INLINE_PASSWORD}"')
    run("inline-wrong-password", inline, local, base_env, 3)
    run("config-error", inline + "unknown_key = 1\n", local, base_env, 2)

    records = [p.read_bytes() for p in tmp_path.rglob("runs/**/*.json")]
    client = s3_test_client(s3_server)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket):
        records += [client.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read()
                    for o in page.get("Contents", []) if "/runs/" in o["Key"]]
    assert len(records) >= 3
    searched = outputs + records
    # Positive control: what should be there is there, so an absence below means something.
    assert any(b"U3333333.OtherKey" in blob for blob in records) and any(b" ibreports.pipeline: " in blob for blob in outputs)
    secrets = {
        "PGP passphrase": pgp_key.passphrase.encode(),
        "SSH key passphrase": sftp_client_key[2].encode(),
        "FTP password": ftp.password.encode(),
        "wrong PGP passphrase": b"wrong pgp passphrase 1",
        "wrong SSH passphrase": b"wrong ssh passphrase 2",
        "wrong FTP password": b"wrong-ftp-password-3",
        "inline FTP password": INLINE_PASSWORD.encode(),
        "AWS secret key": b"testing-secret-key",
        "bad-file plaintext": marker,
    }
    for i, m in enumerate(sftp_delivery.markers + ftp_delivery.markers):
        secrets[f"statement plaintext {i}"] = m
    for i, piece in enumerate(key_fragments(sftp_client_key[0]) + key_fragments(pgp_key.secret_file)):
        secrets[f"private key fragment {i}"] = piece
    leaks = sorted({what for what, value in secrets.items() for blob in searched if value in blob})
    assert leaks == [], leaks
    assert sum(len(b) for b in outputs) > 5000  # the debug runs did talk: an empty capture proves nothing
