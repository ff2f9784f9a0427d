"""Config loader: defaults, secret references, relative paths, clear errors (never a crash)."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ibreports.cli import main
from ibreports.config import Config, Secret, load_config, parse_config
from ibreports.errors import ConfigError
from ibreports.remote.registry import Capabilities, SettingError, SourceKind, get_kind, known_kinds, register

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
    sftp, ftp = (s.settings for s in cfg.sources)
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
    assert cfg.sources[1].settings.password.get() == "hunter2-from-file"
    assert cfg.pgp.passphrase.get() == "correct horse battery"
    text = repr(cfg) + str(cfg.sources[1].settings.password)
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
        ("[[sources]]\nname='a'\nkind='scp'\nusername='u'\n", "sources.a.kind"),
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


# -- source kinds come from the registry ------------------------------------------------------

def test_an_unknown_kind_fails_once_listing_every_known_kind(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config("[[sources]]\nname='a'\nkind='scp'\n", tmp_path / "ibreports.toml")
    text = str(err.value)
    assert "'sources.a.kind'" in text and "'scp'" in text
    assert all(f"'{kind}'" in text for kind in known_kinds())


def test_a_source_keeps_the_common_keys_and_its_kind_settings(tmp_path):
    cfg = parse_config(FULL, tmp_path / "ibreports.toml")
    sftp, ftp = cfg.sources
    assert isinstance(sftp.settings, get_kind("sftp").settings) and isinstance(ftp.settings, get_kind("ftp").settings)
    assert sftp.settings.known_hosts == tmp_path / "keys/known_hosts"
    assert (sftp.timeout, sftp.connections, sftp.settle_seconds) == (30.0, 4, 120)
    assert not hasattr(sftp.settings, "password") and not hasattr(ftp.settings, "key_file")
    assert (sftp.allow_plain, ftp.allow_plain) == (True, False)  # the kinds' defaults


def test_a_key_of_another_kind_is_named_as_such(tmp_path):
    text = "[[sources]]\nname='a'\nkind='sftp'\nusername='u'\nkey_file='k'\npassword='p'\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, tmp_path / "ibreports.toml")
    assert "unknown key 'sources.a.password'" in err.value.message
    assert "'password' is a key of ftp sources" in err.value.remedy


def test_a_kind_registered_by_a_test_needs_no_username_and_may_refuse_delete(tmp_path):
    # READ_ONLY (below) is registered by this test module only; the library knows nothing of it.
    cfg = parse_config("[[sources]]\nname='r'\nkind='read-only-toy'\nfolder='x'\n", tmp_path / "ibreports.toml")
    assert cfg.sources[0].settings == ReadOnlySettings(folder="x")
    cfg = parse_config("[[sources]]\nname='r'\nkind='read-only-toy'\nfolder='x'\ntags=['a']\naccount='U1'\nkey='k'\n",
                       tmp_path / "ibreports.toml")
    assert cfg.sources[0].settings == ReadOnlySettings(folder="x", tags=["a"], account="U1", key=tmp_path / "k")
    with pytest.raises(ConfigError, match="'sources.r.account' must be an integer or a string \\(got a list\\)"):
        parse_config("[[sources]]\nname='r'\nkind='read-only-toy'\nfolder='x'\naccount=[1]\n", tmp_path / "x.toml")
    assert cfg.sources[0].allow_plain is False  # the kind's default
    with pytest.raises(ConfigError, match="sources.r.folder"):
        parse_config("[[sources]]\nname='r'\nkind='read-only-toy'\n", tmp_path / "ibreports.toml")
    with pytest.raises(ConfigError) as err:
        parse_config("[[sources]]\nname='r'\nkind='read-only-toy'\nfolder='x'\ndelete_after_archive=true\n",
                     tmp_path / "ibreports.toml")
    assert "sources.r.delete_after_archive" in str(err.value) and "cannot delete" in str(err.value)


@dataclasses.dataclass(frozen=True)
class ReadOnlySettings:
    folder: str = ""
    tags: list[str] = dataclasses.field(default_factory=list)
    account: int | str = 0
    key: Path | None = None

    def checked(self) -> "ReadOnlySettings":
        if not self.folder:
            raise SettingError("folder", "a folder name")
        return self


# An on-demand kind (listing=False): the remote contract suite, which is for listing kinds, leaves it out.
READ_ONLY = register(SourceKind(
    name="read-only-toy", settings=ReadOnlySettings, open=lambda source: None, doctor=lambda *args: None,
    slots=lambda source: ["toy"], capabilities=Capabilities(listing=False, delete=False), allow_plain_default=False,
))


# -- messages: one key path per key, "did you mean", plain type names ---------------------------

@pytest.mark.parametrize(
    "text, key, suggestion",
    [
        ("[[sources]]\nname='ibkr-sftp'\nkind='sftp'\nusername='u'\nkey_file='k'\nremote_dri='x'\n",
         "sources.ibkr-sftp.remote_dri", "remote_dir"),
        ("[[sources]]\nname='f'\nkind='ftp'\nusername='u'\npassword='p'\npasive=false\n", "sources.f.pasive", "passive"),
        ("[[sources]]\nnmae='a'\nkind='ftp'\n", "sources[0].nmae", "name"),
        ("[archive]\nkeep_encryted=true\n", "archive.keep_encryted", "keep_encrypted"),
        ("[retention]\npurge_day=3\n", "retention.purge_day", "purge_days"),
        ("[archiv]\nurl='x'\n", "archiv", "archive"),
    ],
)
def test_an_unknown_key_gets_did_you_mean(tmp_path, text, key, suggestion):
    with pytest.raises(ConfigError) as err:
        parse_config(text, tmp_path / "ibreports.toml")
    assert f"unknown key '{key}'" in err.value.message
    assert err.value.remedy.startswith(f"Did you mean '{suggestion}'?")


def test_an_unknown_key_like_nothing_gets_no_guess(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config("[retention]\nzzz=1\n", tmp_path / "ibreports.toml")
    assert "Did you mean" not in err.value.remedy and "purge_days" in err.value.remedy


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[sources]]\nname='a'\nkind='ftp'\nusername='u'\npassword='p'\nport='21'\n",
         "'sources.a.port' must be an integer (got a string)"),
        ("[[sources]]\nname='a'\nkind='ftp'\nusername='u'\npassword='p'\ntls='yes'\n",
         "'sources.a.tls' must be true or false (got a string)"),
        ("[[sources]]\nname='a'\nkind='ftp'\nusername='u'\npassword='p'\ntimeout=true\n",
         "'sources.a.timeout' must be a number (got true or false)"),
        ("[[sources]]\nname='a'\nkind='sftp'\nusername='u'\nkey_file='k'\ndisabled_algorithms=[1]\n",
         "'sources.a.disabled_algorithms' must be a table (got a list)"),
        ("[archive]\nurl=5\n", "'archive.url' must be a string (got an integer)"),
        ("[run]\nworkers=1.5\n", "'run.workers' must be an integer (got a number)"),
        ("[[sources]]\nname='a'\nkind='ftp'\nusername='u'\npassword='p'\n[[sources]]\nname='a'\nkind='ftp'\n"
         "username='u'\npassword='p'\n", "'sources.a.name' must be unique"),
    ],
)
def test_type_errors_name_the_key_by_source_name_and_the_type_in_words(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text, tmp_path / "ibreports.toml")
    assert message in err.value.message


def test_a_kind_name_is_registered_once():
    sftp = get_kind("sftp")
    assert register(sftp) is sftp  # the same kind again: nothing changes
    with pytest.raises(ValueError, match="'sftp' is already registered"):
        register(dataclasses.replace(sftp, capabilities=Capabilities(delete=False)))
    assert get_kind("sftp") is sftp and known_kinds()[:2] == ["sftp", "ftp"]
