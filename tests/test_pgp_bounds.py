"""Hostile input and exits: decompression bombs are refused with bounded disk use; no gpg
process outlives its parent (kill -9, SIGTERM, SIGINT); temporary homes are swept; the
passphrase never reaches gpg-agent's environment; no core dumps while secrets are held."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import zlib
from pathlib import Path

import pytest

from ibreports.config import parse_config
from ibreports.errors import DecryptionError
from ibreports.files import LOCK_NAME
from ibreports.pgp import Decryptor, Limits, decryptor_for, sweep_abandoned_homes
from tests.fixtures.pgpkeys import encrypt_bytes, make_bomb
from tests.reliability import CLI
from tests.waiting import eventually

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bomb(pgp_key, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.pgp"
    make_bomb(pgp_key.public_file, path, mib=256)
    return path


def _watch_size(path: Path, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], path.stat().st_size)
        except OSError:
            pass
        stop.wait(0.001)


def _decrypt_watched(d: Decryptor, src: Path, dest: Path) -> tuple[DecryptionError, int]:
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=_watch_size, args=(dest, stop, peak))
    watcher.start()
    try:
        with pytest.raises(DecryptionError) as info:
            d.decrypt(src, dest)
    finally:
        stop.set()
        watcher.join()
    return info.value, peak[0]


@pytest.mark.parametrize("limits, bound", [
    (Limits(max_expansion=100, max_output=8 << 20), 8 << 20),  # the absolute cap
    (Limits(), 64 << 20),  # defaults: a small file gets the 64 MiB floor
])
def test_bomb_is_refused_with_bounded_output(pgp_key, bomb, tmp_path, limits, bound):
    assert bomb.stat().st_size < 1 << 20  # 256 MiB of plaintext in a small message
    with Decryptor([pgp_key.secret_file], pgp_key.passphrase, homes=1, limits=limits) as d:
        err, peak = _decrypt_watched(d, bomb, tmp_path / "out.xml")
        assert err.reason == "oversized" and "(oversized)" in err.message
        assert str(bound) in err.message and "max_expansion" in err.remedy
        assert not (tmp_path / "out.xml").exists() and bomb.exists()
        assert peak <= bound + (1 << 20)  # at most the bound and gpg's last write hit the disk
        assert not _gpg_processes(d.homes[0], "--decrypt")  # the child was stopped, not left running


def test_a_decryption_that_runs_too_long_is_stopped(pgp_key, bomb, tmp_path):
    limits = Limits(max_output=1 << 40, timeout_base=0.1, timeout_rate=1 << 40)  # 0.1 s for 256 MiB of output
    with Decryptor([pgp_key.secret_file], pgp_key.passphrase, homes=1, limits=limits) as d:
        with pytest.raises(DecryptionError) as info:
            d.decrypt(bomb, tmp_path / "out.xml")
        assert info.value.reason == "timeout" and "did not finish within" in info.value.message
        assert not (tmp_path / "out.xml").exists()
        assert not _gpg_processes(d.homes[0], "--decrypt")


def test_compressed_flex_xml_passes_the_default_bound(pgp_key, tmp_path):
    rng = random.Random(7)
    rows = "".join(
        f'<Trade accountId="U1234567" symbol="{rng.choice(["AAPL", "MSFT", "SPY", "ESZ6"])}" '
        f'quantity="{rng.randint(1, 500)}" tradePrice="{rng.uniform(10, 500):.4f}" '
        f'tradeDate="2026110{rng.randint(1, 9)}" ibCommission="-{rng.uniform(0, 2):.2f}" currency="USD"/>\n'
        for _ in range(60_000)
    ).encode()
    xml = b'<?xml version="1.0"?>\n<FlexQueryResponse><Trades>\n' + rows + b"</Trades></FlexQueryResponse>\n"
    src = tmp_path / "flex.pgp"
    encrypt_bytes(pgp_key.public_file, xml, src)
    ratio = len(xml) / src.stat().st_size
    assert 5 <= ratio <= 30 and len(zlib.compress(xml, 9)) < len(xml) / 5
    with Decryptor([pgp_key.secret_file], pgp_key.passphrase, homes=1) as d:
        d.decrypt(src, tmp_path / "flex.xml")
    assert (tmp_path / "flex.xml").read_bytes() == xml


def test_config_bounds_reach_the_decryptor(pgp_key, tmp_path):
    cfg = parse_config(f'[pgp]\nsecret_key_file = "{pgp_key.secret_file}"\npassphrase = "{pgp_key.passphrase}"\n'
                       "max_expansion = 20\nmax_output = 1048576\n", tmp_path / "c.toml")
    with decryptor_for(cfg.pgp, homes=1) as d:
        assert d.limits == Limits(20.0, 1 << 20)
        assert d.limits.bound(100) == 1 << 20  # the cap wins over the floor


# -- processes ----------------------------------------------------------------------------------

def _gpg_processes(home: Path, *words: str) -> list[int]:
    """PIDs of gpg / gpg-agent processes working in ``home``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]).startswith(b"gpg") and str(home).encode() in argv \
                and all(w.encode() in argv for w in words):
            found.append(int(proc.name))
    return found


HOLDER = """
import json, signal, sys, time
from ibreports.pgp import Decryptor, Limits
signal.signal(signal.SIGINT, signal.default_int_handler)
d = Decryptor([sys.argv[1]], sys.argv[2], homes=2, limits=Limits(max_expansion=1e9, max_output=1 << 40))
print(json.dumps([str(h) for h in d.homes]), flush=True)
if len(sys.argv) > 3:
    d.decrypt(sys.argv[3], sys.argv[4])
time.sleep(600)
"""


def _holder(pgp_key, tmp_path, *extra: str) -> tuple[subprocess.Popen, list[Path]]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(pgp_key.secret_file), pgp_key.passphrase, *extra],
                            stdout=subprocess.PIPE, env=env, cwd=REPO)
    homes = [Path(h) for h in json.loads(proc.stdout.readline())]
    assert all(h.is_dir() for h in homes) and all(_gpg_processes(h, "--daemon") or _gpg_processes(h) for h in homes)
    return proc, homes


def _gone(homes: list[Path]) -> bool:
    return not any(h.exists() or _gpg_processes(h) for h in homes)


def test_kill_9_mid_decrypt_leaves_no_gpg_process(pgp_key, bomb, tmp_path):
    proc, homes = _holder(pgp_key, tmp_path, str(bomb), str(tmp_path / "out.xml"))
    try:
        # The whole 256 MiB is written (no bound here): gpg runs for a while.
        assert eventually(lambda: any(_gpg_processes(h, "--decrypt") for h in homes), timeout=60, step=0.005)
    finally:
        proc.kill()
        proc.wait()
    assert eventually(lambda: _gone(homes), timeout=30)  # gpg, gpg-agent and the homes


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_agents_and_remove_homes(pgp_key, tmp_path, sig):
    proc, homes = _holder(pgp_key, tmp_path)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert eventually(lambda: _gone(homes), timeout=30)


def test_passphrase_never_reaches_the_agents_environment(pgp_key, tmp_path, monkeypatch):
    monkeypatch.setenv("IBR_TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    cfg = parse_config(f'[pgp]\nsecret_key_file = "{pgp_key.secret_file}"\npassphrase = "env:IBR_TEST_PGP_PASSPHRASE"\n',
                       tmp_path / "c.toml")
    with decryptor_for(cfg.pgp, homes=1) as d:
        [agent] = _gpg_processes(d.homes[0], "--daemon")
        environ = Path(f"/proc/{agent}/environ").read_bytes()
    assert pgp_key.passphrase.encode() not in environ
    assert b"IBR_TEST_PGP_PASSPHRASE" not in environ
    assert set(v.split(b"=")[0] for v in environ.split(b"\0") if v) <= {b"PATH", b"LC_ALL", b"GNUPGHOME", b"GPG_AGENT_INFO"}


def test_no_core_dumps_once_keys_are_loaded(pgp_key):
    code = ("import resource, sys\nfrom ibreports.pgp import Decryptor\n"
            "resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
            "assert resource.getrlimit(resource.RLIMIT_CORE)[0] != 0\n"
            "with Decryptor([sys.argv[1]], sys.argv[2], homes=1):\n"
            "    print(resource.getrlimit(resource.RLIMIT_CORE)[0])\n")
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    assert hard == resource.RLIM_INFINITY  # the check below is meaningful: cores were possible
    out = subprocess.run([sys.executable, "-c", code, str(pgp_key.secret_file), pgp_key.passphrase],
                         capture_output=True, text=True, cwd=REPO, check=True, timeout=120)
    assert out.stdout.strip() == "0"


# -- sweeping -----------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["ibr-gpg-", "ibreports-gpg-", "ibreports-verify-"])
def test_every_kind_of_abandoned_home_is_swept_by_any_command(tmp_path, prefix):
    """A killed command's home (its lock no longer held) goes at the next command's start;
    a live one stays."""
    abandoned = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_path))
    (abandoned / LOCK_NAME).write_text("")
    (abandoned / "private-keys-v1.d").mkdir()
    live = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_path))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(600)\n", str(live / LOCK_NAME)],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}
        result = subprocess.run([*CLI, "--config", str(tmp_path / "none.toml"), "status"],
                                capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
        assert result.returncode == 2, result.stderr  # the command itself fails (no config) ...
        assert not abandoned.exists()  # ... but the sweep ran first
        assert live.exists()
        assert "left by an interrupted command" in result.stderr
    finally:
        holder.kill()
        holder.wait()


def test_sweep_function_takes_abandoned_homes_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None
    try:
        abandoned = Path(tempfile.mkdtemp(prefix="ibreports-verify-"))
        (abandoned / LOCK_NAME).write_text("")
        assert sweep_abandoned_homes() == 1 and not abandoned.exists()
    finally:
        tempfile.tempdir = None


def test_keygen_homes_start_gpg_with_a_minimal_environment(monkeypatch, pgp_key):
    from ibreports.keyfiles import gnupg_home, open_gpg

    monkeypatch.setenv("IBREPORTS_KEY_PASSPHRASE", "keygen passphrase marker 91")
    with gnupg_home() as home:
        assert home.name.startswith("ibreports-gpg-")  # a kind the sweep knows
        open_gpg(home).import_keys_file(str(pgp_key.secret_file))  # starts the home's gpg-agent
        [agent] = eventually(lambda: _gpg_processes(home, "--daemon"))
        environ = Path(f"/proc/{agent}/environ").read_bytes()
    assert b"keygen passphrase marker 91" not in environ and b"IBREPORTS_KEY_PASSPHRASE" not in environ
    assert eventually(lambda: not _gpg_processes(home)) and not home.exists()
