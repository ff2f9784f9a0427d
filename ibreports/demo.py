"""`ibreports demo`: the whole pipeline against a local sandbox standing in for IBKR.

Throwaway keys (their passphrase lives only in this process's environment), a
sandbox sFTP server seeded with realistic deliveries encrypted to the demo PGP
key, a config file pointing at it with its host key pinned, then a real run into
a local archive. Prefect-free: the caller passes the function that runs the flow.
"""

from __future__ import annotations

import base64
import io
import os
import random
import secrets
import shutil
import sys
import zipfile
from dataclasses import dataclass
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path
from typing import Callable, TextIO

from .errors import ConfigError

MARKER = ".ibreports-demo"
PASSPHRASE_ENV = "IBREPORTS_DEMO_PASSPHRASE"
SOURCE = "demo-sftp"
SYMBOLS = [("AAPL", "APPLE INC", 265598, 228.5), ("MSFT", "MICROSOFT CORP", 272093, 415.2),
           ("VWRL", "VANGUARD FTSE ALL-WORLD", 128831206, 118.9), ("ASML", "ASML HOLDING NV", 117902840, 655.0)]


@dataclass(frozen=True)
class Delivery:
    """One seeded server file: its name, its plaintext, and how it is delivered."""

    name: str
    plaintext: bytes
    mtime: float
    armor: bool = False  # ASCII-armored (.asc) rather than binary

    @property
    def encrypted(self) -> bool:
        return self.name.endswith((".pgp", ".gpg", ".asc"))


def _ymd(day: date) -> str:
    return day.strftime("%Y%m%d")


def _trades(rng: random.Random, account: str, day: date, tag: str, count: int) -> str:
    rows = []
    for i in range(count):
        sym, desc, conid, px = rng.choice(SYMBOLS)
        qty = rng.choice([10, 25, 50, 100]) * rng.choice([1, -1])
        price = round(px * rng.uniform(0.98, 1.02), 2)
        rows.append(
            f'<{tag} accountId="{account}" currency="USD" assetCategory="STK" symbol="{sym}" '
            f'description="{desc}" conid="{conid}" tradeID="{rng.randrange(10**9, 10**10)}" '
            f'tradeDate="{_ymd(day)}" settleDateTarget="{_ymd(day + timedelta(days=1))}" '
            f'quantity="{qty}" tradePrice="{price}" proceeds="{-qty * price:.2f}" '
            f'ibCommission="-1.00" buySell="{"BUY" if qty > 0 else "SELL"}" openCloseIndicator="O"/>'
        )
    return "".join(rows)


def flex_xml(query: str, kind: str, accounts: list[str], start: date, end: date, seed: str) -> bytes:
    """A well-formed Flex query response (``kind``: AF activity, TCF trade confirmations)."""
    rng = random.Random(seed)
    parts = []
    for account in accounts:
        if kind == "TCF":
            body = f"<TradeConfirms>{_trades(rng, account, end, 'TradeConfirm', 2)}</TradeConfirms>"
        else:
            body = (
                f'<AccountInformation accountId="{account}" currency="USD" name="Demo Client" '
                f'accountType="{"Advisor" if account.startswith("F") else "Individual"}"/>'
                f"<Trades>{_trades(rng, account, end, 'Trade', rng.randint(1, 4))}</Trades>"
                f'<CashReport><CashReportCurrency accountId="{account}" currency="BASE_SUMMARY" '
                f'endingCash="{rng.uniform(1e4, 1e5):.2f}"/></CashReport>'
            )
        parts.append(
            f'<FlexStatement accountId="{account}" fromDate="{_ymd(start)}" toDate="{_ymd(end)}" '
            f'period="{"LastBusinessDay" if start == end else "LastMonth"}" '
            f'whenGenerated="{_ymd(end + timedelta(days=1))};021500">{body}</FlexStatement>'
        )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<FlexQueryResponse queryName="{query}" type="{kind}">'
        f'<FlexStatements count="{len(accounts)}">{"".join(parts)}</FlexStatements></FlexQueryResponse>\n'
    )
    return xml.encode()


def csv_zip(account: str, day: date) -> bytes:
    """A zipped CSV delivery: trades and cash, as IBKR's CSV Flex queries send them."""
    rng = random.Random(f"{account}{day}")
    trades = ["ClientAccountID,Symbol,TradeDate,Quantity,TradePrice,IBCommission"]
    for _ in range(3):
        sym, _, _, px = rng.choice(SYMBOLS)
        trades.append(f"{account},{sym},{_ymd(day)},{rng.choice([10, 20, -10])},{px * rng.uniform(0.98, 1.02):.2f},-1.00")
    cash = ["ClientAccountID,CurrencyPrimary,EndingCash", f"{account},USD,{rng.uniform(1e4, 1e5):.2f}"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        stamp = (day.year, day.month, day.day, 2, 15, 0)
        zf.writestr(zipfile.ZipInfo("Trades.csv", stamp), "\n".join(trades) + "\n")
        zf.writestr(zipfile.ZipInfo("CashReport.csv", stamp), "\n".join(cash) + "\n")
    return buf.getvalue()


def deliveries(now: datetime) -> list[Delivery]:
    """The seeded server folder: several accounts and formats, one file close to the purge."""
    today = now.date()
    d1, d2, old = today - timedelta(days=1), today - timedelta(days=2), today - timedelta(days=95)
    month_end = today.replace(day=1) - timedelta(days=1)
    month_start = month_end.replace(day=1)
    nowts = now.timestamp()

    def at(day: date) -> float:  # delivered overnight, the morning after the statement date
        return min(datetime.combine(day + timedelta(days=1), dtime(2, 15), timezone.utc).timestamp(), nowts - 600)

    def activity(acct: str, day: date, suffix: str = "xml.pgp", armor: bool = False) -> Delivery:
        name = f"{acct}.DailyActivity.{_ymd(day)}.{_ymd(day)}.{suffix}"
        return Delivery(name, flex_xml("DailyActivity", "AF", [acct], day, day, name), at(day), armor)

    monthly = f"F1234567.MonthlyActivity.{_ymd(month_start)}.{_ymd(month_end)}.xml.pgp"
    confirms = f"U1234567.TradeConfirms.{_ymd(d1)}.{_ymd(d1)}.xml.pgp"
    positions = f"U1234567.Positions.{_ymd(d1)}.{_ymd(d1)}.xml"
    return [
        activity("U1234567", d1),
        activity("U1234567", d2),
        activity("U7654321", d1),
        activity("U7654321", d2, "xml.gpg"),
        activity("DU1234567", d1),
        activity("DU1234567", d2, "xml.asc", armor=True),
        activity("U1234567", old),  # 95 days old: `status` flags it until it is archived
        Delivery(monthly, flex_xml("MonthlyActivity", "AF", ["F1234567", "U1234567", "U7654321"],
                                   month_start, month_end, monthly), at(month_end)),
        Delivery(confirms, flex_xml("TradeConfirms", "TCF", ["U1234567"], d1, d1, confirms), at(d1)),
        Delivery(f"U7654321.ActivityCSV.{_ymd(d1)}.{_ymd(d1)}.zip.pgp", csv_zip("U7654321", d1), at(d1)),
        Delivery(positions, flex_xml("Positions", "AF", ["U1234567"], d1, d1, positions), at(d1)),
    ]


def seed(folder: Path, items: list[Delivery], public_key: Path) -> None:
    """Write each delivery into ``folder``, encrypted to ``public_key`` when its name says so."""
    import gnupg

    from .keyfiles import gnupg_home

    folder.mkdir(parents=True, exist_ok=True)
    with gnupg_home() as home:
        gpg = gnupg.GPG(gnupghome=str(home))
        imported = gpg.import_keys(public_key.read_text())
        if not imported.fingerprints:
            raise ConfigError(f"The demo PGP public key {public_key} did not import.", "Run the demo again.")
        for item in items:
            path = folder / item.name
            if item.encrypted:
                result = gpg.encrypt(item.plaintext, imported.fingerprints[0], always_trust=True,
                                     armor=item.armor, output=str(path))
                if not result.ok:
                    raise ConfigError(f"gpg could not encrypt {item.name} ({result.status}).", "Check the gpg install.")
            else:
                path.write_bytes(item.plaintext)
            os.utime(path, (item.mtime, item.mtime))


def prepare(folder: Path) -> None:
    """Create the demo folder, or clear a previous demo in it; never touch other folders."""
    if folder.exists() and any(folder.iterdir()) and not (folder / MARKER).exists():
        raise ConfigError(
            f"{folder} exists, is not empty and was not made by `ibreports demo`.",
            "Pass an empty or new folder with --dir.",
        )
    for part in ("keys", "server", "archive"):
        shutil.rmtree(folder / part, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    (folder / MARKER).write_text("made by ibreports demo; safe to delete\n")


CONFIG = """\
# Written by `ibreports demo`: a sandbox sFTP server on this machine stood in for IBKR.
# The keys' passphrase lived only in the demo's process, so this file is a template now.
[[sources]]
name = "{source}"
kind = "sftp"
host = "127.0.0.1"
port = {port}
username = "demo"
key_file = "keys/ibkr_sftp_rsa"
key_passphrase = "env:{env}"
known_hosts = "keys/known_hosts"
remote_dir = "outgoing"
settle_seconds = 0

[pgp]
secret_key_file = "keys/ibkr_pgp_secret.asc"
passphrase = "env:{env}"

[archive]
url = "archive"

[retention]
purge_days = 100
warn_days = 14
"""


def run_demo(folder: Path, run_flow: Callable[[Path], object], out: TextIO = sys.stdout,
             now: datetime | None = None) -> int:
    """Seed, serve, run ``run_flow(config_path)``, then show what the archive holds. Exit code.

    ``now`` fixes the seeded deliveries (``deliveries(now)``) for tests.
    """
    import paramiko

    from .config import load_config
    from .keys import generate_keys
    from .sandbox import SandboxServer
    from .status import collect_status, format_table

    folder = folder.absolute()
    prepare(folder)
    passphrase = secrets.token_urlsafe(24)
    os.environ[PASSPHRASE_ENV] = passphrase  # only this process (and its flow) ever sees it
    try:
        print(f"1. Throwaway keys in {folder / 'keys'} (2048-bit, for speed) ...", file=out, flush=True)
        keys = generate_keys(folder / "keys", passphrase, name="ibreports demo", rsa_bits=2048, pgp_bits=2048)
        items = deliveries(now or datetime.now(timezone.utc))
        seed(folder / "server" / "outgoing", items, folder / "keys" / "ibkr_pgp_public.asc")
        kind, b64 = keys.ssh_public_key.split()[:2]
        client_key = paramiko.PKey.from_type_string(kind, base64.b64decode(b64))
        with SandboxServer(folder / "server", authorized_key=client_key) as server:
            server.write_known_hosts(folder / "keys" / "known_hosts")
            config_path = folder / "ibreports.toml"
            config_path.write_text(CONFIG.format(source=SOURCE, port=server.port, env=PASSPHRASE_ENV))
            print(f"2. Sandbox sFTP server on 127.0.0.1:{server.port} ({server.fingerprint()}, pinned in "
                  f"keys/known_hosts) with {len(items)} deliveries for U1234567, U7654321, F1234567, DU1234567.",
                  file=out)
            config = load_config(config_path)
            print("\n3. ibreports status (before):", file=out)
            print(format_table(collect_status(config)), file=out, flush=True)
            print("\n4. Flow 'retrieve-statements': list, download, verify, decrypt, archive ...", file=out, flush=True)
            run_flow(config_path)
            after = collect_status(config)
        print(f"\n5. Status after the run: {len(after.files)} file(s) on the server, "
              f"{sum(r.archived for r in after.files)} archived, {len(after.at_risk)} at risk.", file=out)
        print(f"\nArchive {folder / 'archive'}:", file=out)
        print(tree(folder / "archive"), file=out)
        print(NEXT_STEPS.format(config=config_path), file=out)
        done = all(r.archived for r in after.files) and not after.errors
        return 0 if done else 1
    finally:
        os.environ.pop(PASSPHRASE_ENV, None)


def tree(root: Path) -> str:
    """The archive as an indented tree with sizes and modes (statements are 0400: read-only)."""
    lines = []
    for path in sorted(root.rglob("*")):
        if path.name.startswith(".tmp-"):
            continue
        depth = len(path.relative_to(root).parts) - 1
        if path.is_dir():
            lines.append(f"{'  ' * depth}{path.name}/")
        else:
            st = path.stat()
            lines.append(f"{'  ' * depth}{path.name}  ({st.st_size} bytes, mode {st.st_mode & 0o777:04o})")
    return "\n".join(lines) or "(empty)"


NEXT_STEPS = """
The demo config is {config} (its throwaway passphrase is gone with this process).
For real use:
  1. ibreports keygen                       # keys/: sFTP and PGP key pairs (4096-bit), passphrase-protected
  2. email keys/ibkr_sftp_rsa.pub to IBKR's Reporting Integration team (reportingintegration@interactivebrokers.com)
     with your username; upload keys/ibkr_pgp_public.asc in Client Portal for encrypted delivery
  3. ibreports keys backup --to s3://your-bucket/ibreports-keys.bundle
  4. write ibreports.toml (docs/configuration.md); export IBREPORTS_KEY_PASSPHRASE
  5. ibreports trust-host --source ibkr-sftp # check the fingerprint with IBKR, then pin it
  6. ibreports doctor                       # every step checked, with the fix for each failure
  7. ibreports fetch                        # then: ibreports status
  8. make deploy                            # the daily run and the automations that watch it (docs/prefect.md)
  9. [alerts] urls = ["..."] in ibreports.toml # a message on a failed run, files at risk, a server down (docs/alerts.md)"""
