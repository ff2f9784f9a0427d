"""Config loader: defaults, secret references, relative paths, clear errors (never a crash)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ibreports.cli import main
from ibreports.config import Config, Secret, load_config, parse_config
from ibreports.errors import ConfigError

FULL = """
[[sources]]
name = "ibkr-sftp"
kind = "sftp"
username = "acme_reports"
key_file = "keys/ibkr_sftp_rsa"
key_passphrase = "env:IBREPORTS_KEY_PASSPHRASE"
known_hosts = "keys/known_hosts"
remote_dir = "outgoing"

[[sources]]
name = "ibkr-ftp"
kind = "ftp"
username = "acme"
password = "file:ftp_password"
tls = true

[pgp]
secret_key_file = ["keys/ibkr_pgp_secret.asc", "keys/retired/old.asc"]
passphrase = "env:IBREPORTS_KEY_PASSPHRASE"

[archive]
url = "s3://bucket/prefix"
server_side_encryption = "aws:kms"
kms_key_id = "alias/ib"

[retention]
purge_days = 100
warn_days = 10
"""


def test_full_example_with_defaults_and_relative_paths(tmp_path):
    cfg = parse_config(FULL, tmp_path / "ibreports.toml")
    sftp, ftp = cfg.sources
    assert (sftp.host, sftp.port) == ("xfer.interactivebrokers.com", 32)
    assert (ftp.host, ftp.port, ftp.passive, ftp.tls) == ("ftp2.interactivebrokers.com", 21, True, True)
    assert sftp.key_file == tmp_path / "keys/ibkr_sftp_rsa"
    assert cfg.pgp.secret_key_files[1] == tmp_path / "keys/retired/old.asc"
    assert cfg.archive.is_s3 and cfg.archive.kms_key_id == "alias/ib"
    assert cfg.retention.warn_days == 10


def test_local_archive_default_is_relative_to_config(tmp_path):
    cfg = parse_config("", tmp_path / "x.toml")
    assert cfg.archive.url == str(tmp_path / "archive") and cfg.sources == []


def test_secret_references_resolve_lazily_and_never_print(tmp_path, monkeypatch):
    (tmp_path / "ftp_password").write_text("hunter2-from-file\n")
    monkeypatch.setenv("IBREPORTS_KEY_PASSPHRASE", "correct horse battery")
    cfg = parse_config(FULL, tmp_path / "ibreports.toml")
    assert cfg.sources[1].password.get() == "hunter2-from-file"
    assert cfg.pgp.passphrase.get() == "correct horse battery"
    text = repr(cfg) + str(cfg.sources[1].password)
    assert "hunter2" not in text and "correct horse" not in text
    assert "********" in repr(Secret("inline-secret", "x", tmp_path))


def test_missing_env_secret_names_key_and_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("IBREPORTS_KEY_PASSPHRASE", raising=False)
    cfg = parse_config(FULL, tmp_path / "ibreports.toml")
    with pytest.raises(ConfigError, match="pgp.passphrase.*IBREPORTS_KEY_PASSPHRASE"):
        cfg.pgp.passphrase.get()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[[sources]]\nname='a'\nkind='scp'\nusername='u'\n", "sources[0].kind"),
        ("[[sources]]\nname='a'\nkind='sftp'\nusername='u'\n", "sources.a.key_file"),
        ("[[sources]]\nname='a'\nkind='ftp'\nusername='u'\n", "sources.a.password"),
        ("[[sources]]\nname='a'\nkind='ftp'\nusername='u'\npassword='p'\nport='21'\n", "sources.a.port"),
        ("[archive]\nurl='http://x'\n", "archive.url"),
        ("[archive]\nbucket='x'\n", "archive.bucket"),
        ("[retention]\nwarn_days=200\n", "retention.warn_days"),
        ("[pgp]\nsecret_key_file=3\n", "pgp.secret_key_file"),
        ("nonsense = = 1", "not valid TOML"),
        ("[[sources]]\nname='a'\nkind='ftp'\nusername='u'\npassword='p'\n[[sources]]\nname='a'\nkind='ftp'\nusername='u'\npassword='p'\n", "unique"),
    ],
)
def test_validation_errors_name_file_and_key(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as err:
        parse_config(text, tmp_path / "ibreports.toml")
    assert fragment in str(err.value) and "ibreports.toml" in str(err.value)


def test_config_file_discovery(tmp_path, monkeypatch):
    (tmp_path / "custom.toml").write_text("[retention]\nwarn_days = 3\n")
    monkeypatch.setenv("IBREPORTS_CONFIG", str(tmp_path / "custom.toml"))
    assert load_config().retention.warn_days == 3
    monkeypatch.delenv("IBREPORTS_CONFIG")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config()


def test_cli_config_error_exit_2_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[archive]\nurl = 5\n")
    assert main(["--config", str(bad), "fetch"]) == 2
    err = capsys.readouterr().err
    assert "archive.url" in err and "Traceback" not in err


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gives_config_or_config_error(text):
    try:
        assert isinstance(parse_config(text, Path("/tmp/h/ibreports.toml")), Config)
    except ConfigError:
        pass


toml_scalar = st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.floats(allow_nan=False), st.lists(st.text(max_size=5), max_size=3))
keys = st.sampled_from(["name", "kind", "host", "port", "username", "key_file", "password", "passive", "tls", "timeout",
                        "connections", "settle_seconds", "remote_dir", "known_hosts", "disabled_algorithms", "bogus"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, toml_scalar, max_size=8), st.sampled_from(["sources", "pgp", "archive", "retention", "alerts", "run"]))
def test_any_structure_gives_config_or_config_error(table, section):
    def fmt(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.encode("unicode_escape").decode().replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    header = "[[sources]]" if section == "sources" else f"[{section}]"
    text = header + "\n" + "\n".join(f"{k} = {fmt(v)}" for k, v in table.items())
    try:
        parse_config(text, Path("/tmp/h/ibreports.toml"))
    except ConfigError:
        pass


def test_global_flags_work_after_the_command_too(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[archive]\nurl = 5\n")
    assert main(["fetch", "--config", str(bad)]) == 2
    assert main(["status", "--debug", "--config", str(bad)]) == 2
    assert "archive.url" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_without_traceback(tmp_path, capsys, monkeypatch):
    import ibreports.cli.fetch as fetch_cli

    def boom(args):
        raise RuntimeError("internal detail")

    monkeypatch.setattr(fetch_cli, "run", boom)
    assert main(["fetch"]) == 1
    err = capsys.readouterr().err
    assert "unexpected RuntimeError" in err and "--debug" in err and "Traceback" not in err and "internal detail" not in err
