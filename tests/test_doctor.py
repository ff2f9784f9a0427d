"""`ibreports doctor` against failures made real: closed and silent ports, wrong keys, blocked data ports, ..."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from ibreports.cli import main
from tests.doctorhelpers import ENCRYPTED, doctor, ftp_toml, sftp_toml
from tests.fixtures.pgpkeys import encrypt_bytes
from tests.fixtures.sshd import Sha1OnlySshd, free_port, make_client_key

STATEMENT = b"<FlexQueryResponse queryName='DailyActivity'>one</FlexQueryResponse>\n"
def write_config(tmp_path: Path, sources: list[str], pgp_key, archive: str | None = None, passphrase: str | None = None) -> Path:
    cfg = tmp_path / "ibreports.toml"
    pgp = f'[pgp]\nsecret_key_file = "{pgp_key.secret_file}"\npassphrase = {json.dumps(passphrase or pgp_key.passphrase)}\n'
    cfg.write_text("\n".join(sources) + "\n" + pgp + (archive or f'[archive]\nurl = "{tmp_path / "archive"}"\n'))
    return cfg


def statuses(section: dict[str, dict]) -> dict[str, str]:
    return {name: step["status"] for name, step in section.items()}


@pytest.fixture
def sshd(sshd_factory, sftp_client_key):
    return sshd_factory([sftp_client_key[1]])


@pytest.fixture
def known_hosts(sshd, tmp_path) -> Path:
    return sshd.write_known_hosts(tmp_path / "known_hosts")


def test_healthy_setup_is_all_ok(tmp_path, sshd, known_hosts, sftp_client_key, ftp_factory, pgp_key,
                                 s3_server, s3_bucket, capsys):
    encrypt_bytes(pgp_key.public_file, STATEMENT, sshd.root / "outgoing" / ENCRYPTED)
    (sshd.root / "outgoing" / "plain.csv").write_text("a,b\n")
    ftp = ftp_factory(tls=True)
    encrypt_bytes(pgp_key.public_file, STATEMENT, ftp.root / "outgoing" / ENCRYPTED.replace(".pgp", ".asc"), armor=True)
    archive = f'[archive]\nurl = "s3://{s3_bucket}/ib"\nendpoint_url = "{s3_server}"\nregion = "us-east-1"\n'
    cfg = write_config(tmp_path, [sftp_toml(sshd, sftp_client_key, known_hosts), ftp_toml(ftp)], pgp_key, archive)

    assert main(["--config", str(cfg), "doctor"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "skip" not in out and "doctor: all" in out
    lines = out.splitlines()
    for name in ("key", "dns", "tcp", "banner", "hostkey", "auth", "list", "sample"):
        assert any(line.startswith(f"  ok    {name} ") for line in lines), name
    assert "  ok    dns      " in out and "127.0.0.1 -> 127.0.0.1" in out
    assert "SSH-2.0-OpenSSH" in out and "2 file(s), 1 encrypted" in out
    assert "certificate verified" in out and "passive to 127.0.0.1:" in out
    assert "sample ibkr-ftp" in out and pgp_key.subkey_id in out

    code, report = doctor(cfg, capsys)
    assert code == 0
    assert statuses(report["ibkr-ftp"]) == {name: "ok" for name in
                                            ("dns", "tcp", "welcome", "tls", "login", "folder", "data", "list", "sample")}
    assert statuses(report["archive"]) == {"open": "ok", "write": "ok", "read": "ok", "delete": "ok"}
    assert all(isinstance(step["ms"], int) for step in report["ibkr-sftp"].values())
    from tests.fixtures.s3 import s3_test_client
    assert s3_test_client(s3_server).list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0  # probe removed


def test_closed_port(tmp_path, sshd, known_hosts, sftp_client_key, pgp_key, capsys):
    source = sftp_toml(sshd, sftp_client_key, known_hosts, port=free_port())
    code, report = doctor(write_config(tmp_path, [source], pgp_key), capsys)
    assert code == 3
    tcp = report["ibkr-sftp"]["tcp"]
    assert tcp["status"] == "FAIL" and "refused the connection" in tcp["cause"]
    assert "Wrong port or host" in tcp["fix"] and "port 32" in tcp["fix"]
    assert [report["ibkr-sftp"][s]["status"] for s in ("banner", "hostkey", "auth", "list")] == ["skip"] * 4
    assert report["archive"]["write"]["status"] == "ok"  # other sections still run


def test_tcp_time_out_names_whitelisting_and_the_local_address(tmp_path, sshd, known_hosts, sftp_client_key, pgp_key, capsys):
    # A listener whose accept queue is full: the kernel drops further SYNs, so connect() really times out.
    # (10.255.255.1 is no good here: this sandbox answers it through a transparent proxy.)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        while True:
            filler = socket.socket()
            filler.settimeout(0.3)
            fillers.append(filler)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        source = sftp_toml(sshd, sftp_client_key, known_hosts, port=port, timeout=1)
        code, report = doctor(write_config(tmp_path, [source], pgp_key), capsys)
    finally:
        for sock in [listener, *fillers]:
            sock.close()
    assert code == 3
    tcp = report["ibkr-sftp"]["tcp"]
    assert tcp["status"] == "FAIL" and "within 1 s" in tcp["cause"] and tcp["ms"] >= 900
    assert "IBKR must whitelist your public IP" in tcp["fix"] and "connected from 127.0.0.1" in tcp["fix"]


def test_silent_port_is_a_banner_time_out(tmp_path, sshd, known_hosts, sftp_client_key, pgp_key, capsys):
    with socket.socket() as silent:  # listens (the kernel completes the handshake) but never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        source = sftp_toml(sshd, sftp_client_key, known_hosts, port=silent.getsockname()[1], timeout=1)
        code, report = doctor(write_config(tmp_path, [source], pgp_key), capsys)
    assert code == 3
    steps = report["ibkr-sftp"]
    assert steps["tcp"]["status"] == "ok" and steps["banner"]["status"] == "FAIL"
    assert "sent no SSH banner within 1 s" in steps["banner"]["cause"] and "check host and port" in steps["banner"]["fix"]
    assert steps["hostkey"]["status"] == "skip"


def test_ftp_port_given_for_sftp(tmp_path, ftp_factory, sftp_client_key, pgp_key, capsys):
    ftp = ftp_factory()
    source = sftp_toml(ftp, sftp_client_key, tmp_path / "known_hosts", remote_dir="outgoing")
    code, report = doctor(write_config(tmp_path, [source], pgp_key), capsys)
    banner = report["ibkr-sftp"]["banner"]
    assert code == 3 and "not as an SSH server" in banner["cause"] and "220" in banner["cause"]


def test_unknown_host_key_stops_before_login(tmp_path, sshd, sftp_client_key, pgp_key, capsys):
    code, report = doctor(write_config(tmp_path, [sftp_toml(sshd, sftp_client_key, tmp_path / "none")], pgp_key), capsys)
    assert code == 3
    step = report["ibkr-sftp"]["hostkey"]
    assert "is not in" in step["cause"] and "ssh-ed25519 SHA256:" in step["cause"]
    assert "ibreports trust-host --source ibkr-sftp --fingerprint SHA256:" in step["fix"]
    assert report["ibkr-sftp"]["auth"]["status"] == "skip"
    assert "Accepted" not in sshd.log_text()


def test_changed_host_key(tmp_path, sshd, sshd_factory, sftp_client_key, pgp_key, capsys):
    impostor = sshd_factory([sftp_client_key[1]])  # another server, another host key, same port in known_hosts
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{impostor.port} {sshd.host_key_line()}\n")
    source = sftp_toml(impostor, sftp_client_key, known)
    code, report = doctor(write_config(tmp_path, [source], pgp_key), capsys)
    step = report["ibkr-sftp"]["hostkey"]
    assert code == 3 and "CHANGED" in step["cause"] and "intercepting" in step["cause"]
    assert "ask IBKR" in step["fix"]
    assert "Accepted" not in impostor.log_text()


def test_wrong_ssh_key(tmp_path, sshd_factory, sftp_client_key, pgp_key, capsys):
    _path, other_public = make_client_key(tmp_path, None)
    server = sshd_factory([other_public])  # IBKR holds a different public key
    source = sftp_toml(server, sftp_client_key, server.write_known_hosts(tmp_path / "known_hosts"))
    code, report = doctor(write_config(tmp_path, [source], pgp_key), capsys)
    auth = report["ibkr-sftp"]["auth"]
    assert code == 3 and auth["status"] == "FAIL" and "refused our key" in auth["cause"]
    assert "does not match the public key IBKR holds" in auth["fix"]
    assert "send ibkr_sftp_rsa.pub to IBKR's Reporting Integration team" in auth["fix"]
    assert report["ibkr-sftp"]["list"]["status"] == "skip"


def test_server_that_only_accepts_sha1_signatures(tmp_path, sftp_client_key, pgp_key, capsys):
    server = Sha1OnlySshd(tmp_path / "sshd", [sftp_client_key[1]])
    try:
        source = sftp_toml(server, sftp_client_key, server.write_known_hosts(tmp_path / "known_hosts"))
        code, report = doctor(write_config(tmp_path, [source], pgp_key), capsys)
        auth = report["ibkr-sftp"]["auth"]
        assert code == 3 and auth["status"] == "FAIL" and "ssh-rsa (SHA-1)" in auth["cause"]
        assert 'disabled_algorithms = { pubkeys = ["rsa-sha2-256", "rsa-sha2-512"] }' in auth["fix"]
        assert report["ibkr-sftp"]["list"]["status"] == "ok"  # the legacy login was used to go on

        opted_in = sftp_toml(server, sftp_client_key, tmp_path / "known_hosts",
                             disabled_algorithms={"pubkeys": ["rsa-sha2-256", "rsa-sha2-512"]})
        code, report = doctor(write_config(tmp_path, [opted_in], pgp_key), capsys)
        assert code == 0 and report["ibkr-sftp"]["auth"]["status"] == "ok"
    finally:
        server.stop()


def test_missing_remote_folder(tmp_path, sshd, known_hosts, sftp_client_key, pgp_key, capsys):
    source = sftp_toml(sshd, sftp_client_key, known_hosts, remote_dir=str(sshd.root / "incoming"))
    code, report = doctor(write_config(tmp_path, [source], pgp_key), capsys)
    step = report["ibkr-sftp"]["list"]
    assert code == 2 and "does not exist" in step["cause"] and "usually 'outgoing'" in step["fix"]


def test_wrong_ssh_key_passphrase_still_checks_the_network(tmp_path, sshd, known_hosts, sftp_client_key, pgp_key, capsys):
    source = sftp_toml(sshd, sftp_client_key, known_hosts, key_passphrase="not the passphrase")
    code, report = doctor(write_config(tmp_path, [source], pgp_key), capsys)
    assert code == 2
    assert statuses(report["ibkr-sftp"]) == {"key": "FAIL", "dns": "ok", "tcp": "ok", "banner": "ok", "hostkey": "ok",
                                             "auth": "skip", "list": "skip"}
    assert "IBREPORTS_KEY_PASSPHRASE" in report["ibkr-sftp"]["key"]["fix"]


def test_unresolvable_host(tmp_path, sshd, known_hosts, sftp_client_key, pgp_key, capsys):
    source = sftp_toml(sshd, sftp_client_key, known_hosts, host="no-such-host.invalid")
    code, report = doctor(write_config(tmp_path, [source], pgp_key), capsys)
    dns = report["ibkr-sftp"]["dns"]
    assert code == 3 and "Cannot resolve host no-such-host.invalid" in dns["cause"] and "DNS" in dns["fix"]


def test_wrong_ftp_password(tmp_path, ftp_factory, pgp_key, capsys):
    ftp = ftp_factory()
    code, report = doctor(write_config(tmp_path, [ftp_toml(ftp, password="wrong password")], pgp_key), capsys)
    steps = report["ibkr-ftp"]
    assert code == 3 and steps["welcome"]["status"] == "ok" and steps["login"]["status"] == "FAIL"
    assert "refused the username or password" in steps["login"]["cause"] and "password" in steps["login"]["fix"]
    assert [steps[s]["status"] for s in ("folder", "data", "list")] == ["skip"] * 3


def test_blocked_passive_data_port(tmp_path, ftp_factory, pgp_key, capsys):
    ftp = ftp_factory(broken_pasv=True)  # PASV advertises a port where nothing listens
    code, report = doctor(write_config(tmp_path, [ftp_toml(ftp)], pgp_key), capsys)
    data = report["ibkr-ftp"]["data"]
    assert code == 3 and report["ibkr-ftp"]["login"]["status"] == "ok" and data["status"] == "FAIL"
    assert "data connection" in data["cause"]
    assert "Passive mode" in data["fix"] and "firewall" in data["fix"] and "high ports" in data["fix"]


def test_ftps_certificate_not_trusted(tmp_path, ftp_factory, pgp_key, capsys):
    ftp = ftp_factory(tls=True)
    source = ftp_toml(ftp).replace(f'ca_file = "{ftp.ca_file}"\n', "")
    code, report = doctor(write_config(tmp_path, [source], pgp_key), capsys)
    tls = report["ibkr-ftp"]["tls"]
    assert code == 3 and "could not be verified" in tls["cause"] and "ca_file" in tls["fix"]
    assert report["ibkr-ftp"]["login"]["status"] == "skip"


def test_statements_encrypted_to_another_key(tmp_path, ftp_factory, pgp_key, other_pgp_key, capsys):
    ftp = ftp_factory()
    encrypt_bytes(other_pgp_key.public_file, STATEMENT, ftp.root / "outgoing" / ENCRYPTED)
    code, report = doctor(write_config(tmp_path, [ftp_toml(ftp)], pgp_key), capsys)
    step = report["pgp"]["sample ibkr-ftp"]
    assert code == 1 and step["status"] == "FAIL"
    assert f"encrypted to key {other_pgp_key.subkey_id}; you hold" in step["cause"] and pgp_key.subkey_id in step["cause"]
    assert "Upload ibkr_pgp_public.asc in Client Portal" in step["fix"]
    assert "add the old key to [pgp] secret_key_file" in step["fix"]


def test_wrong_pgp_passphrase(tmp_path, ftp_factory, pgp_key, capsys):
    ftp = ftp_factory()
    encrypt_bytes(pgp_key.public_file, STATEMENT, ftp.root / "outgoing" / ENCRYPTED)
    code, report = doctor(write_config(tmp_path, [ftp_toml(ftp)], pgp_key, passphrase="not it at all"), capsys)
    key_step = report["pgp"][f"key {pgp_key.secret_file.name}"]
    assert code == 2 and "does not unlock" in key_step["cause"]
    assert report["pgp"]["sample ibkr-ftp"]["status"] == "skip"


def test_missing_bucket(tmp_path, ftp_factory, pgp_key, s3_server, capsys):
    ftp = ftp_factory()
    archive = f'[archive]\nurl = "s3://ibr-no-such-bucket/ib"\nendpoint_url = "{s3_server}"\nregion = "us-east-1"\n'
    code, report = doctor(write_config(tmp_path, [ftp_toml(ftp)], pgp_key, archive), capsys)
    write = report["archive"]["write"]
    assert code == 2  # a missing bucket is a configuration error
    assert "Bucket ibr-no-such-bucket does not exist" in write["cause"] and "Create it" in write["fix"]
    assert report["archive"]["delete"]["status"] == "skip"


def test_text_output_shows_cause_and_fix_lines(tmp_path, ftp_factory, pgp_key, capsys):
    ftp = ftp_factory()
    cfg = write_config(tmp_path, [ftp_toml(ftp, password="wrong password")], pgp_key)
    assert main(["--config", str(cfg), "doctor", "--source", "ibkr-ftp"]) == 3
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  FAIL  login"))
    assert lines[at + 1].startswith("        cause: The FTP server refused")
    assert lines[at + 2].startswith("        fix: Check the username and the password")
    assert lines[at + 3].startswith("  skip  folder")
    assert lines[-1].startswith("doctor: 1 check(s) failed (login); exit 3")


def test_sha1_opt_in_also_lets_fetch_log_in(tmp_path, sftp_client_key, pgp_key):
    """The advice doctor gives must work for the real remote too, not only for doctor."""
    from ibreports.config import load_config
    from ibreports.remote import open_remote

    server = Sha1OnlySshd(tmp_path / "sshd", [sftp_client_key[1]])
    try:
        (server.root / "outgoing" / "U1234567.Activity.20261101.20261101.xml").write_bytes(b"<x/>")
        opted_in = sftp_toml(server, sftp_client_key, server.write_known_hosts(tmp_path / "known_hosts"),
                             disabled_algorithms={"pubkeys": ["rsa-sha2-256", "rsa-sha2-512"]})
        config = load_config(write_config(tmp_path, [opted_in], pgp_key))
        with open_remote(config.sources[0]) as remote:
            assert [f.name for f in remote.list()] == ["U1234567.Activity.20261101.20261101.xml"]
    finally:
        server.stop()


def test_doctor_runs_the_steps_a_registered_kind_brings(tmp_path, pgp_key, capsys):
    """A kind registered by a test (tests/memory_remote.py) is diagnosed by its own steps, like sftp and ftp."""
    from tests import memory_remote

    memory_remote.SERVERS["doctor-toy"] = server = memory_remote.MemoryServer()
    server.files["U1234567.A.20261101.20261101.xml.pgp"] = memory_remote.Stored(bytearray(b"x"), 0.0)
    try:
        cfg = write_config(tmp_path, ['[[sources]]\nname = "toy"\nkind = "memory"\nstore = "doctor-toy"\n',
                                      '[[sources]]\nname = "gone"\nkind = "memory"\nstore = "nowhere"\n'], pgp_key)
        code, sections = doctor(cfg, capsys)
    finally:
        del memory_remote.SERVERS["doctor-toy"]
    assert statuses(sections["toy"]) == {"open": "ok", "list": "ok"}
    assert "1 file(s), 1 encrypted" in sections["toy"]["list"]["detail"]
    assert statuses(sections["gone"]) == {"open": "FAIL", "list": "skip"}
    assert code == 2 and "nowhere" in sections["gone"]["open"]["cause"]
