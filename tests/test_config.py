"""Config loader: defaults, secret references, relative paths, clear errors (never a crash)."""

from __future__ import annotations

import collections
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


def test_delete_after_archive_requires_the_encrypted_original_kept(tmp_path):
    source = "[[sources]]\nname='a'\nkind='ftp'\nusername='u'\npassword='p'\ndelete_after_archive=true\n"
    assert parse_config(source, tmp_path / "ibreports.toml").sources[0].delete_after_archive
    with pytest.raises(ConfigError) as err:
        parse_config(source + "[archive]\nkeep_encrypted=false\n", tmp_path / "ibreports.toml")
    assert "sources.a.delete_after_archive" in str(err.value) and "keep_encrypted = true" in str(err.value)
    assert parse_config(source.replace("true", "false") + "[archive]\nkeep_encrypted=false\n", tmp_path / "x.toml")


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
# Values a near-valid config holds: right types and wrong ones, secret references, edge numbers.
plausible = st.sampled_from(["sftp", "ftp", "ibkr", "", "a/b", "s3://bucket/p", "s3://", "/srv/archive", "env:X",
                             "file:pw", "prefect:blk", "aws:kms", "AES256", "keys/k", 0, 1, 14, 100, 65536, -1,
                             True, False, [], ["keys/a.asc"], ["json://localhost"], [1]])
value = st.one_of(plausible, toml_scalar)
VALID = {  # one valid table per section; each example perturbs some of them with keys that section knows
    "sftp": {"name": "ibkr-sftp", "kind": "sftp", "username": "acme", "key_file": "keys/k", "remote_dir": "outgoing"},
    "ftp": {"name": "ibkr-ftp", "kind": "ftp", "username": "acme", "password": "env:FTP_PASSWORD"},
    "pgp": {"secret_key_file": "keys/pgp.asc", "passphrase": "env:PGP_PASSPHRASE"},
    "archive": {"url": "s3://bucket/prefix"},
    "retention": {"purge_days": 100, "warn_days": 10},
    "alerts": {"urls": ["json://localhost"]},
    "run": {"workers": 4, "staging_dir": "staging"},
}
SOURCE_KEYS = ["name", "kind", "host", "port", "username", "remote_dir", "key_file", "key_passphrase", "known_hosts",
               "password", "passive", "tls", "ca_file", "disabled_algorithms", "proxy_command", "timeout",
               "connections", "settle_seconds", "delete_after_archive"]
SECTION_KEYS = {
    "sftp": SOURCE_KEYS, "ftp": SOURCE_KEYS, "pgp": ["secret_key_file", "passphrase"],
    "archive": ["url", "endpoint_url", "region", "server_side_encryption", "kms_key_id", "keep_encrypted"],
    "retention": ["purge_days", "warn_days"], "alerts": ["urls", "unreachable_days"],
    "run": ["workers", "staging_dir"],
}


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


@st.composite
def near_valid_config(draw) -> str:
    """A whole config: each section valid, changed (keys it knows, now and then an unknown one) or left out."""
    parts = []
    for section, valid in VALID.items():
        how = draw(st.sampled_from(["valid", "valid", "valid", "changed", "absent"]))
        if how == "absent":
            continue
        table = dict(valid)
        if how == "changed":
            keys = st.sampled_from(SECTION_KEYS[section] + ["bogus"] * (draw(st.integers(0, 9)) == 0))
            table.update(draw(st.dictionaries(keys, value, min_size=1, max_size=4)))
            for key in draw(st.lists(st.sampled_from(sorted(valid)), max_size=2)):
                table.pop(key, None)
        header = "[[sources]]" if section in ("sftp", "ftp") else f"[{section}]"
        parts.append(header + "\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items()))
    return "\n".join(parts)


def test_any_structure_gives_config_or_config_error():
    seen = collections.Counter()

    @settings(max_examples=400, deadline=None, derandomize=True, database=None)
    @given(near_valid_config())
    def property_holds(text):
        try:
            assert isinstance(parse_config(text, Path("/tmp/h/ibreports.toml")), Config)
            seen["config"] += 1
        except ConfigError as exc:
            seen["unknown key" if "unknown key" in exc.message else "other validation error"] += 1

    property_holds()
    # Near-valid inputs reach past the key check: valid configs and the value checks behind it both occur.
    assert seen["config"] >= 20 and seen["other validation error"] >= 100, seen


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
