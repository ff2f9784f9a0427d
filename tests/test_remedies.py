"""Remedies that point the right way, each tried on the real case: an sshd that offers only algorithms
paramiko lacks, an FTP server that requires TLS, a key listed twice with a wrong passphrase, a .ppk key.
fetch and doctor say the same sentence (they share the code that produces it)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest

from ibreports.cli import main
from tests import configs
from tests.fixtures.pgpkeys import encrypt_bytes
from tests.fixtures.sshd import OptionsSshd, make_client_key

STATEMENT = b"<FlexQueryResponse queryName='DailyActivity'>one</FlexQueryResponse>\n"
ENCRYPTED = "U1234567.DailyActivity.20261101.20261101.xml.pgp"


def write_config(tmp_path: Path, sources: str, pgp: str) -> Path:
    cfg = tmp_path / "ibreports.toml"
    cfg.write_text(f"{sources}\n{pgp}\n[archive]\nurl = \"{tmp_path / 'archive'}\"\n")
    return cfg


def pgp_table(pgp_key, files: list[Path] | None = None) -> str:
    listed = json.dumps([str(f) for f in files]) if files else json.dumps(str(pgp_key.secret_file))
    return f'[pgp]\nsecret_key_file = {listed}\npassphrase = "env:TEST_PGP_PASSPHRASE"\n'


def run(cfg: Path, capsys, *args: str) -> tuple[int, str]:
    code = main(["--config", str(cfg), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def doctor(cfg: Path, capsys) -> tuple[int, list[dict]]:
    code, out = run(cfg, capsys, "doctor", "--json")
    return code, [step for section in json.loads(out)["sections"] for step in section["steps"]]


def failed(steps: list[dict]) -> list[dict]:
    return [s for s in steps if s["status"] == "FAIL"]


# -- a. SSH: the server offers only algorithms paramiko lacks --------------------------------------

def sshd_offering(tmp_path: Path, key, options: dict[str, str]) -> OptionsSshd:
    return OptionsSshd(tmp_path / "sshd", [key[1]], options)


@pytest.mark.parametrize("option, value, what", [
    ("KexAlgorithms", "curve25519-sha256", "key exchange"),
    ("KexAlgorithms", "sntrup761x25519-sha512@openssh.com", "key exchange"),
    ("Ciphers", "chacha20-poly1305@openssh.com", "cipher"),
])
def test_an_sshd_offering_only_algorithms_paramiko_lacks_says_so_and_whom_to_ask(
        tmp_path, sftp_client_key, pgp_key, env, capsys, option, value, what):
    assert value not in {*paramiko.Transport._preferred_kex, *paramiko.Transport._preferred_ciphers}
    server = sshd_offering(tmp_path, sftp_client_key, {option: value})
    try:
        known = server.write_known_hosts(tmp_path / "known_hosts")
        cfg = write_config(tmp_path, configs.sftp_toml(server, sftp_client_key, known), pgp_table(pgp_key))
        code, out = run(cfg, capsys, "fetch")
        doctor_code, steps = doctor(cfg, capsys)
    finally:
        server.stop()
    assert code == 3 and doctor_code == 3, out
    assert f"offers only SSH {what} algorithms that ibreports (paramiko {paramiko.__version__}) lacks" in out
    assert f"the server offers {value}; we support " in out
    ours = paramiko.Transport._preferred_kex if what == "key exchange" else paramiko.Transport._preferred_ciphers
    assert ", ".join(ours) in out  # what we support, all of it
    assert "ask IBKR (or the server's admin) to also enable one of" in out and f"sshd: {option}" in out
    assert "disabled_algorithms" not in out  # none is set, so none is blamed
    if value == "curve25519-sha256":  # the same curve under paramiko's name for it
        assert "curve25519-sha256@libssh.org (the same algorithm as curve25519-sha256" in out
    fail = failed(steps)
    assert [s["name"] for s in fail] == ["hostkey"]
    assert fail[0]["cause"] in out and fail[0]["fix"] in out  # doctor and fetch: the same sentences


@pytest.mark.parametrize("offered", ["ecdh-sha2-nistp256", "curve25519-sha256"])
def test_disabled_algorithms_is_blamed_only_when_it_turns_off_what_the_server_offers(
        tmp_path, sftp_client_key, pgp_key, env, capsys, offered):
    server = sshd_offering(tmp_path, sftp_client_key, {"KexAlgorithms": offered})
    try:
        known = server.write_known_hosts(tmp_path / "known_hosts")
        source = configs.sftp_toml(server, sftp_client_key, known) + 'disabled_algorithms = { kex = ["ecdh-sha2-nistp256"] }\n'
        cfg = write_config(tmp_path, source, pgp_table(pgp_key))
        code, out = run(cfg, capsys, "fetch")
    finally:
        server.stop()
    assert code == 3
    assert f"the server offers {offered}; we support " in out
    ours = re.split(r"[.,]? \(|\. |, and ", out.split("we support ", 1)[1], maxsplit=1)[0]
    assert "mlkem768x25519-sha256" in ours.split(", ")
    assert "ecdh-sha2-nistp256" not in ours.split(", ")  # what we offer, less what the source disables
    if offered == "ecdh-sha2-nistp256":
        assert "disabled_algorithms turns off ecdh-sha2-nistp256" in out
        assert "Remove ecdh-sha2-nistp256 from disabled_algorithms.kex of source ibkr-sftp" in out
    else:
        assert "disabled_algorithms is not the cause: nothing it disables is offered" in out
        assert "ask IBKR (or the server's admin)" in out and "Remove " not in out


# -- b. FTP: a server that requires TLS, a source without it ----------------------------------------

def test_an_ftp_server_requiring_tls_is_not_called_a_wrong_password(tmp_path, ftp_factory, pgp_key, env, capsys,
                                                                    monkeypatch):
    server = ftp_factory(tls=True)  # pyftpdlib: tls_control_required, answers USER with 550
    monkeypatch.setenv("TEST_FTP_PASSWORD", server.password)  # the right password
    encrypt_bytes(pgp_key.public_file, STATEMENT, server.root / "outgoing" / ENCRYPTED)
    cfg = write_config(tmp_path, configs.ftp_toml(server, tls=False), pgp_table(pgp_key))
    code, out = run(cfg, capsys, "fetch")
    doctor_code, steps = doctor(cfg, capsys)
    assert code == 2 and doctor_code == 2, out
    assert "SSL/TLS required on the control channel" in out
    assert "requires TLS before the login" in out and "Set tls = true for source ibkr-ftp" in out
    assert "refused the username or password" not in out and "IBKR can reset it" not in out
    fail = failed(steps)
    assert [s["name"] for s in fail] == ["login"] and fail[0]["fix"] in out

    # With tls = true and the server's certificate pinned, the same source logs in and fetches.
    cfg = write_config(tmp_path, configs.ftp_toml(server, tls=True, ca_file=str(server.ca_file)), pgp_table(pgp_key))
    code, out = run(cfg, capsys, "fetch")
    assert code == 0, out
    assert list((tmp_path / "archive" / "statements").rglob("*.xml"))


# -- c. the same key listed twice, with a wrong passphrase: fetch and doctor say the same ------------

def test_a_key_listed_twice_with_a_wrong_passphrase_is_reported_alike_by_fetch_and_doctor(
        tmp_path, sftp_setup, sftp_client_key, pgp_key, env, capsys, monkeypatch, caplog):
    server, known, delivered = sftp_setup
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", "not the passphrase of that key")
    twice = [pgp_key.secret_file, pgp_key.secret_file]
    cfg = write_config(tmp_path, configs.sftp_toml(server, sftp_client_key, known), pgp_table(pgp_key, twice))
    code, out = run(cfg, capsys, "fetch")
    fetch_said = out + caplog.text
    doctor_code, steps = doctor(cfg, capsys)
    assert code == 1  # the plain delivery archived, the encrypted ones failed: locked
    assert doctor_code == 2  # a key problem
    keys = [s for s in steps if s["name"].startswith("key ")]
    assert [(s["name"], s["status"]) for s in keys] == [("key listed twice", "ok"), (f"key {pgp_key.secret_file.name}", "FAIL")]
    note = keys[0]["detail"]
    assert f"lists {pgp_key.secret_file} 2 times: it is loaded once" in note
    assert fetch_said.count(note) == 1  # fetch logs the same sentence, once
    cause, fix = keys[1]["cause"], keys[1]["fix"]
    assert "does not unlock the PGP key" in cause and "TEST_PGP_PASSPHRASE" in fix
    assert f"cannot be used: {cause} {fix}" in caplog.text  # once per run, the same sentences
    assert sum(r.getMessage().startswith("PGP key in") for r in caplog.records) == 1
    encrypted = [n for n in delivered if n.endswith((".pgp", ".asc"))]
    reason = f"(locked): it is encrypted to key {pgp_key.subkey_id}, which cannot be used: {cause} {fix}"
    assert out.count(reason) == len(encrypted)

    # g. The installed command says each file's reason once (the table; not again as a log line),
    # and status shows the last run's reason whole, its remedy included.
    cli = [sys.executable, str(Path(sys.executable).with_name("ibreports")), "--config", str(cfg)]
    done = subprocess.run([*cli, "fetch"], capture_output=True, text=True, timeout=300)
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert said.count(reason) == len(encrypted), said
    assert said.count(" already archived, ") == 1  # the summary line once
    assert done.stderr.count(note) == 1 and done.stderr.count(f"cannot be used: {cause} {fix}") == 1
    done = subprocess.run([*cli, "status"], capture_output=True, text=True, timeout=300)
    assert done.stdout.count(f"last run: failed: Decryption refused {reason}\n") == len(encrypted), done.stdout


# -- d. a PuTTY key: the conversion writes a new file, and the config then points at it ---------------

def test_the_ppk_remedy_converts_into_a_new_file_that_then_logs_in(tmp_path, sftp_setup, pgp_key, env, capsys):
    server, known, delivered = sftp_setup
    (tmp_path / "made").mkdir()
    openssh, public = make_client_key(tmp_path / "made", None)
    server.authorized_keys.write_text(public + "\n")
    keys = tmp_path / "keys"
    keys.mkdir()
    ppk = keys / "ibkr_sftp_rsa"  # what a PuTTY user names it: the very name the old remedy wrote to
    subprocess.run(["puttygen", str(openssh), "-O", "private", "-o", str(ppk)], check=True, capture_output=True,
                   timeout=60)
    assert ppk.read_bytes().startswith(b"PuTTY-User-Key-File")
    original = ppk.read_bytes()
    source = configs.sftp_toml(server, (ppk, public, None), known)
    cfg = write_config(tmp_path, source, pgp_table(pgp_key))
    code, out = run(cfg, capsys, "fetch")
    assert code == 2 and "is in PuTTY (.ppk) format" in out, out
    command = out.split("(the .ppk stays as it is): ", 1)[1].split(" ; then", 1)[0]
    converted = keys / "ibkr_sftp_rsa_openssh"
    assert command == f"puttygen {ppk} -O private-openssh -o {converted}"
    assert f'then set key_file = "{converted}" for source ibkr-sftp' in out
    subprocess.run(shlex.split(command), check=True, capture_output=True, timeout=60)  # as the user would
    assert ppk.read_bytes() == original  # the .ppk is still there, untouched
    cfg.write_text(cfg.read_text().replace(f'"{ppk}"', f'"{converted}"'))
    code, out = run(cfg, capsys, "fetch")
    assert code == 0, out
    assert len(list((tmp_path / "archive" / "statements").rglob("*.xml"))) == len(delivered) - 1  # the csv as is


# -- e. keys backup: the verify line it prints runs as printed, from anywhere ----------------------------

def test_the_backup_verify_hint_names_the_config_and_runs_as_printed(tmp_path, s3_server, s3_bucket, monkeypatch,
                                                                     capsys):
    monkeypatch.delenv("IBREPORTS_CONFIG", raising=False)
    monkeypatch.setenv("IBREPORTS_KEY_PASSPHRASE", "the key passphrase for this test")
    keys = tmp_path / "keys"
    assert main(["keygen", "--dir", str(keys), "--rsa-bits", "2048", "--pgp-bits", "2048"]) == 0
    config = tmp_path / "etc" / "mine.toml"  # not ./ibreports.toml: verify must be told
    config.parent.mkdir()
    config.write_text(f'[archive]\nurl = "s3://{s3_bucket}/archive"\nendpoint_url = "{s3_server}"\nregion = "us-east-1"\n')
    secret = tmp_path / "backup-pass"
    secret.write_text("the backup passphrase of this test\n")
    secret.chmod(0o600)
    capsys.readouterr()
    assert main(["--config", str(config), "keys", "backup", "--dir", str(keys), "--to", f"s3://{s3_bucket}/backups/",
                 "--passphrase-file", str(secret)]) == 0
    hint = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Check it any time with: "))
    words = shlex.split(hint.split(": ", 1)[1])
    assert words[:3] == ["ibreports", "--config", str(config)] and "--passphrase-file" in words
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, str(Path(sys.executable).with_name("ibreports")), *words[1:]],
                          cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "OK, 4 files" in done.stdout, done.stdout + done.stderr


# -- f. the demo's next steps deploy the way the docs do -------------------------------------------------

def test_the_demos_deploy_step_is_make_deploy_which_deploys_and_creates_the_automations():
    from ibreports.demo import NEXT_STEPS

    step = next(line for line in NEXT_STEPS.splitlines() if line.lstrip().startswith("8."))
    assert step.split("#")[0].split() == ["8.", "make", "deploy"]
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    recipe = makefile.split("\ndeploy:", 1)[1].split("\n\n", 1)[0]
    assert "prefect deploy --all" in recipe and "-m flows.automations" in recipe


# -- h. the documented configuration is safe: FTP with TLS, parsed by the real parser ---------------------

def test_the_configuration_example_parses_and_its_ftp_source_uses_tls(tmp_path, monkeypatch):
    from ibreports.config import load_config

    page = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    example = page.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = tmp_path / "ibreports.toml"
    cfg.write_text(example)
    config = load_config(str(cfg))
    ftp = [s for s in config.sources if s.kind == "ftp"]
    assert ftp and all(s.settings.tls for s in ftp)


@pytest.mark.parametrize("right_first", [True, False])
def test_two_copies_of_one_key_with_their_own_passphrases_decrypt_when_one_is_right(
        tmp_path, sftp_setup, sftp_client_key, pgp_key, env, capsys, monkeypatch, right_first):
    """The same key in two files, one entry with a wrong passphrase: the right one unlocks it, in either order."""
    server, known, delivered = sftp_setup
    copy = tmp_path / "copy_of_secret.asc"
    copy.write_bytes(pgp_key.secret_file.read_bytes())
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", "not the passphrase of that key")
    monkeypatch.setenv("RIGHT_PASSPHRASE", pgp_key.passphrase)
    entries = [f'{{ file = "{copy}", passphrase = "env:RIGHT_PASSPHRASE" }}', json.dumps(str(pgp_key.secret_file))]
    pgp = (f'[pgp]\nsecret_key_file = [{", ".join(entries if right_first else entries[::-1])}]\n'
           'passphrase = "env:TEST_PGP_PASSPHRASE"\n')
    cfg = write_config(tmp_path, configs.sftp_toml(server, sftp_client_key, known), pgp)
    code, out = run(cfg, capsys, "fetch")
    assert code == 0, out
    statements = [p for p in (tmp_path / "archive" / "statements").rglob("*") if p.is_file()]
    assert len(statements) == len(delivered)  # each delivery decrypted (or, the plain one, kept as is)
