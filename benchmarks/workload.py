"""Benchmark workloads: keys made like a user's, IBKR-style encrypted files on a real sshd.

Keys come from ``ibreports keygen`` (RSA-4096, gpg's default protection of the secret
key), so the hand-written script pays what a real user's script pays.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

PASSPHRASE = "benchmark passphrase 4f9Qx"
MB = 1024 * 1024
QUERIES = ("DailyActivity", "DailyTrades")
START = date(2026, 7, 1)


@dataclass
class Keys:
    folder: Path
    ssh_key: Path  # passphrase-protected (ibreports)
    ssh_plain: Path  # unencrypted copy of the same key (OpenSSH sftp -b cannot prompt)
    ssh_public: str
    pgp_secret: Path
    pgp_public: Path
    fingerprint: str


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}: {proc.stderr[-2000:]!r}")
    return proc


def make_keys(folder: Path) -> Keys:
    """``ibreports keygen`` with the defaults, plus an unencrypted copy of the sFTP key."""
    env = {**os.environ, "IBREPORTS_KEY_PASSPHRASE": PASSPHRASE}
    run([sys.executable, "-c", "from ibreports.cli import run; run()", "keygen", "--dir", str(folder)], env=env)
    plain = folder / "ssh_plain_copy"
    fd = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (folder / "ibkr_sftp_rsa").read_bytes())
    os.close(fd)
    run(["ssh-keygen", "-q", "-p", "-P", PASSPHRASE, "-N", "", "-f", str(plain)])
    home = gpg_home(folder.parent / "gpg-public")
    run(["gpg", "--batch", "--homedir", str(home), "--import", str(folder / "ibkr_pgp_public.asc")])
    colons = run(["gpg", "--batch", "--homedir", str(home), "--with-colons", "--list-keys"]).stdout.decode()
    fpr = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))
    return Keys(folder, folder / "ibkr_sftp_rsa", plain, (folder / "ibkr_sftp_rsa.pub").read_text().strip(),
                folder / "ibkr_pgp_secret.asc", folder / "ibkr_pgp_public.asc", fpr)


def gpg_home(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def script_gpg_home(keys: Keys, path: Path) -> tuple[Path, Path]:
    """A normal GnuPG home with the secret key imported as a user would, and a passphrase file."""
    home = gpg_home(path)
    passfile = path.parent / "script-passphrase"
    fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, PASSPHRASE.encode() + b"\n")
    os.close(fd)
    run(["gpg", "--batch", "--homedir", str(home), "--pinentry-mode", "loopback", "--passphrase-file",
         str(passfile), "--import", str(keys.pgp_secret)])
    return home, passfile


def statement_xml(rng: random.Random, account: str, day: date, size: int) -> bytes:
    """A Flex-query-like XML statement of about ``size`` bytes (compressible, like the real ones)."""
    d = day.strftime("%Y%m%d")
    head = (f'<?xml version="1.0" encoding="UTF-8"?>\n<FlexQueryResponse queryName="Daily" type="AF">\n'
            f'<FlexStatements count="1">\n<FlexStatement accountId="{account}" fromDate="{d}" toDate="{d}">\n<Trades>\n')
    parts, total = [head], len(head)
    symbols = ("AAPL", "MSFT", "NVDA", "ES", "EUR.USD", "VWRL", "TLT", "SPY", "BRK B", "ASML")
    while total < size:
        qty = rng.randint(-500, 500) or 1
        price = rng.uniform(1, 900)
        row = (f'<Trade accountId="{account}" currency="USD" symbol="{rng.choice(symbols)}" '
               f'tradeDate="{d}" tradeTime="{rng.randint(93000, 160000)}" quantity="{qty}" '
               f'tradePrice="{price:.4f}" proceeds="{-qty * price:.2f}" ibCommission="{-rng.uniform(0.3, 5):.6f}" '
               f'tradeID="{rng.randint(10**9, 10**10)}" buySell="{"BUY" if qty > 0 else "SELL"}" />\n')
        parts.append(row)
        total += len(row)
    parts.append("</Trades>\n</FlexStatement>\n</FlexStatements>\n</FlexQueryResponse>\n")
    return "".join(parts).encode()


def small_files(folder: Path, count: int, keys: Keys, seed: int, sizes=(20_000, 200_000),
                plain: Path | None = None) -> list[str]:
    """``count`` encrypted statements named like IBKR's, over 100 days and several accounts.

    With ``plain``, the plaintexts are kept there (else removed).
    """
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    accounts = [f"U{7000000 + i * 137:07d}" for i in range(max(1, -(-count // (100 * len(QUERIES)))))]
    names = []
    for i in range(count):
        account = accounts[i // (100 * len(QUERIES))]
        query = QUERIES[(i // 100) % len(QUERIES)]
        day = START + timedelta(days=i % 100)
        d = day.strftime("%Y%m%d")
        name = f"{account}.{query}.{d}.{d}.xml"
        (folder / name).write_bytes(statement_xml(rng, account, day, rng.randint(*sizes)))
        names.append(name)
    _encrypt_all(folder, names, keys, compress=True, plain=plain)
    return [n + ".pgp" for n in names]


def bulk_files(folder: Path, count: int, size: int, keys: Keys, prefix: str = "F7000001.Bulk") -> list[str]:
    """``count`` random files of ``size`` bytes, encrypted without compression."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        d = (START + timedelta(days=i)).strftime("%Y%m%d")
        name = f"{prefix}.{d}.{d}.xml"
        with open(folder / name, "wb") as fh:
            for _ in range(size // MB):
                fh.write(os.urandom(MB))
            fh.write(os.urandom(size % MB))
        names.append(name)
    _encrypt_all(folder, names, keys, compress=False)
    return [n + ".pgp" for n in names]


def _encrypt_all(folder: Path, names: list[str], keys: Keys, compress: bool, plain: Path | None = None) -> None:
    """One gpg process encrypts many files (--multifile); the plaintexts are then removed."""
    home = keys.folder.parent / "gpg-public"
    args = ["gpg", "--batch", "--yes", "--homedir", str(home), "--trust-model", "always",
            "--recipient", keys.fingerprint]
    if not compress:
        args += ["--compress-algo", "none"]
    for start in range(0, len(names), 500):
        chunk = [str(folder / n) for n in names[start:start + 500]]
        run(args + ["--multifile", "--encrypt"] + chunk)
        for path in chunk:
            os.replace(path + ".gpg", path + ".pgp")
            if plain is None:
                os.unlink(path)
            else:
                plain.mkdir(exist_ok=True)
                os.replace(path, plain / Path(path).name)


def populate_archive(archive: Path, remote: Path, plain: Path, source: str) -> int:
    """Write the objects a fetch of ``remote`` would write, at the keys ibreports computes (fast set-up)."""
    from ibreports import statements

    count = 0
    for path in remote.iterdir():
        st = statements.parse(path.name, path.stat().st_mtime)
        for key, src in ((statements.original_key(source, st), path),
                         (statements.statement_key(st), plain / path.name.removesuffix(".pgp"))):
            dest = archive.joinpath(*key.split("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(src.read_bytes())
            count += 1
    return count
