"""A statement's content against its name (ibreports/content.py): unit cases, and a real fetch (sshd, gpg)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from ibreports.cli import main
from ibreports.content import ContentMismatch, check, read_head
from ibreports.statements import parse
from tests.configs import sftp_toml
from tests.fixtures.pgpkeys import encrypt_bytes
from tests.helpers import archived_files, local_archive, write_config

NAME = "U1234567.DailyActivity.20261102.20261102.xml"


def flex(account: str = "U1234567", start: str = "20261102", end: str = "20261102", count: int = 1,
         prolog: str = '<?xml version="1.0" encoding="UTF-8"?>\n') -> bytes:
    statements = "".join(f'<FlexStatement accountId="{account if i == 0 else f"U99999{i:02d}"}" fromDate="{start}" '
                         f'toDate="{end}" period="LastBusinessDay"><Trades/></FlexStatement>' for i in range(count))
    return (f'{prolog}<FlexQueryResponse queryName="DailyActivity" type="AF"><FlexStatements count="{count}">'
            f"{statements}</FlexStatements></FlexQueryResponse>\n").encode()


def write(tmp_path: Path, data: bytes, name: str = "x.xml") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_matching_content_passes(tmp_path):
    path = write(tmp_path, flex())
    assert read_head(path).account == "U1234567"
    check(path, parse(NAME, 0))  # no exception


@pytest.mark.parametrize("content, says", [
    (flex(account="U7654321"), "accountId 'U7654321' where the name says U1234567"),
    (flex(start="20261103", end="20261103"), "fromDate '20261103' where the name says 20261102"),
    (flex(end="2026-11-09"), "toDate '2026-11-09' where the name says 20261102"),
])
def test_another_account_or_day_inside_is_a_named_mismatch(tmp_path, content, says):
    with pytest.raises(ContentMismatch) as caught:
        check(write(tmp_path, content), parse(NAME, 0))
    assert caught.value.reason == "mismatch" and says in caught.value.message
    assert caught.value.message.startswith("mismatch: ") and caught.value.remedy


@pytest.mark.parametrize("content", [
    flex(end="11/02/2026"), flex(start="02/11/2026", end="2026/11/02"), flex(start="02-Nov-26"),  # other Flex formats
    flex(start="sometime"),  # unreadable date: no verdict
    flex(account="U7654321", count=3),  # multi-account (advisor): named by the master, dates checked only
    b"ClientAccountID,Symbol\nU7654321,AAPL\n",  # CSV
    b"PK\x03\x04" + b"\x00" * 100,  # zip
    b"<html><body>U7654321</body></html>",  # XML that is not a Flex statement
    b"<FlexQueryResponse><FlexStatements count='1'>" + b"<Junk/>" * 200_000,  # no FlexStatement in the head
    b"<FlexQueryResponse><FlexStatement accountId='U1234567' ",  # truncated
    b"",
])
def test_no_verdict_where_the_content_does_not_say(tmp_path, content):
    check(write(tmp_path, content), parse(NAME, 0))


def test_entities_and_dtds_are_never_expanded(tmp_path):
    bomb = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">' +
            b"".join(f'<!ENTITY a{i} "{"&a;" * 10 if i == 0 else f"&a{i - 1};" * 10}">'.encode() for i in range(9)) +
            b']><FlexQueryResponse><FlexStatements count="1"><FlexStatement accountId="&a8;" fromDate="20261102" '
            b'toDate="20261102"/></FlexStatements></FlexQueryResponse>')
    assert read_head(write(tmp_path, bomb)) is None  # reading stops at the DTD: no verdict, nothing expanded
    external = flex(prolog='<?xml version="1.0"?><!DOCTYPE r SYSTEM "file:///etc/passwd">')
    assert read_head(write(tmp_path, external, "ext.xml")) is None


def test_only_the_head_is_read(tmp_path):
    big = tmp_path / "big.xml"
    with open(big, "wb") as out:
        out.write(flex(account="U7654321")[:-len(b"</FlexStatements></FlexQueryResponse>\n")])
        for _ in range(16):
            out.write(b"<Trade x='1'/>" * 80_000)  # ~18 MB after the head, never read
    tracemalloc.start()
    try:
        assert read_head(big).account == "U7654321"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # one chunk and the parser, not the file
    late = tmp_path / "late.xml"
    late.write_bytes(b"<FlexQueryResponse>" + b"<Pad/>" * 300_000 + flex()[len(b'<?xml version="1.0" encoding="UTF-8"?>\n'):])
    assert read_head(late) is None  # the FlexStatement starts after HEAD_BYTES: no verdict


def test_fetch_refuses_a_statement_whose_content_disagrees_with_its_name(tmp_path, sshd_factory, sftp_client_key,
                                                                          pgp_key, env, capsys):
    server = sshd_factory([sftp_client_key[1]])
    outgoing = server.root / "outgoing"
    outgoing.mkdir(exist_ok=True)
    good, wrong_account, wrong_day = (f"U1234567.DailyActivity.202611{d}.202611{d}.xml" for d in ("02", "03", "04"))
    encrypt_bytes(pgp_key.public_file, flex(), outgoing / f"{good}.pgp")
    encrypt_bytes(pgp_key.public_file, flex(account="U7654321", start="20261103", end="20261103"),
                  outgoing / f"{wrong_account}.pgp")
    (outgoing / wrong_day).write_bytes(flex(start="20261105", end="20261105"))  # plain, allowed on sftp
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    archive_toml, root = local_archive(tmp_path)
    config = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)

    assert main(["--config", str(config), "fetch"]) == 1
    out = capsys.readouterr().out
    assert "1 archived" in out and "2 failed" in out
    files = archived_files(root)
    assert f"statements/U1234567/2026/11/{good}" in files
    assert not any(k.startswith(("statements/U7654321", f"statements/U1234567/2026/11/{wrong_account}",
                                 f"statements/U1234567/2026/11/{wrong_day}")) for k in files)
    assert f"encrypted/ibkr-sftp/2026/11/{wrong_account}.pgp" in files  # the evidence, as delivered
    [record] = [json.loads(p.read_bytes()) for p in (root / "runs").rglob("*.json")]
    rows = {f["name"]: f for f in record["files"]}
    assert rows[f"{wrong_account}.pgp"]["code"] == rows[wrong_day]["code"] == "mismatch"
    assert "accountId 'U7654321' where the name says U1234567" in rows[f"{wrong_account}.pgp"]["reason"]
    assert "fromDate '20261105' where the name says 20261104" in rows[wrong_day]["reason"]
    assert "accountId 'U7654321'" in out  # the run names it too
    # Nothing filed, so coverage names the day as refused with the mismatch, not "run fetch".
    assert main(["--config", str(config), "coverage", "--account", "U1234567", "--until", "2026-11-04", "--json"]) == 1
    gaps = json.loads(capsys.readouterr().out)["kinds"][0]["gaps"]
    assert [(g["from"], g["to"], g["status"]) for g in gaps] == [("2026-11-03", "2026-11-04", "refused")]
    assert {v["code"] for v in gaps[0]["refused"].values()} == {"mismatch"}
