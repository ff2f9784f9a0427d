"""FTP listings: MLSD (or NLST + SIZE + MDTM) read line by line, bounded, one bad entry skipped alone.

ftplib's ``mlsd``/``nlst`` read without bound, and one line that is not UTF-8 or longer than
8 KiB fails the whole listing there; here such a line, or an entry with an impossible size or
time (``size=abc``, ``modify=2026x101000000``, ``size=-5``), is skipped and named.
"""

from __future__ import annotations

import datetime
import ftplib
import posixpath
import ssl
from typing import Iterator

from ..config import SourceConfig
from . import net
from .listing import Guard, Listing, entry, skip

MAX_LINE = 8192  # bytes per listing line (ftplib's own limit)


def _mtime(value: str) -> float:
    """RFC 3659 time-val (YYYYMMDDHHMMSS[.sss], UTC) to epoch seconds; ValueError when it is not one."""
    value = value.strip()
    if len(value) < 14 or not value[:14].isdigit() or not (len(value) == 14 or value[14] == "." and value[15:].isdigit()):
        raise ValueError(f"modification time {value[:40]!r} is not YYYYMMDDHHMMSS[.sss]")
    stamp = datetime.datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=datetime.timezone.utc)
    frac = float("0" + value[14:]) if len(value) > 15 else 0.0
    return stamp.timestamp() + frac


def _size(value: str) -> int:
    value = value.strip()
    if not value.isdigit():
        raise ValueError(f"size {value[:40]!r} is not a number")
    return int(value)


def _lines(ftp: ftplib.FTP, cmd: str, guard: Guard, listing: Listing, source: SourceConfig) -> Iterator[bytes]:
    """The lines of a listing command, as bytes, counted by ``guard``.

    ftplib's ``mlsd``/``nlst`` read without bound, and one line that is not UTF-8 or longer than
    8 KiB fails the whole listing there; here such a line is skipped and named.
    """
    ftp.sendcmd("TYPE A")
    rate = net.RateGuard(source, "the listing")
    with ftp.transfercmd(cmd) as conn, conn.makefile("rb") as fp:
        while line := fp.readline(MAX_LINE):
            guard.add(len(line), 1)
            rate.feed(len(line))
            if not line.endswith(b"\n") and len(line) >= MAX_LINE:
                while (rest := fp.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                    guard.add(len(rest))
                guard.add(len(rest))
                skip(listing, source, line[:60].decode("utf-8", "replace") + "...",
                     f"listing line longer than {MAX_LINE} bytes")
                continue
            yield line.rstrip(b"\r\n")
        if isinstance(conn, ssl.SSLSocket):
            conn.unwrap()
    ftp.voidresp()


def list_mlsd(ftp: ftplib.FTP, source: SourceConfig) -> Listing:
    """MLSD: one line per entry with its facts; SIZE / MDTM only for facts the server left out."""
    files = Listing()
    entries = []
    for line in _lines(ftp, "MLSD", Guard(source), files, source):
        raw_facts, _, raw_name = line.partition(b" ")
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            skip(files, source, raw_name.decode("utf-8", "replace"), "the name is not valid UTF-8")
            continue
        facts = {}
        for fact in raw_facts.decode("ascii", "replace").rstrip(";").split(";"):
            key, _, value = fact.partition("=")
            facts[key.lower()] = value
        entries.append((name, facts))
    ftp.voidcmd("TYPE I")  # listing switched to ASCII; SIZE and RETR need binary
    for name, facts in entries:
        if facts.get("type", "").lower() != "file" or "/" in name:
            continue
        try:
            size = _size(facts["size"]) if "size" in facts else _size_of(ftp, name)
            mtime = _mtime(facts["modify"]) if "modify" in facts else _mdtm(ftp, name)
        except (ValueError, OverflowError) as exc:
            skip(files, source, name, str(exc))
            continue
        entry(files, source, name, size, mtime)
    return files

def list_nlst(ftp: ftplib.FTP, source: SourceConfig) -> Listing:
    """NLST + SIZE + MDTM, for servers without MLSD."""
    files = Listing()
    try:
        lines = list(_lines(ftp, "NLST", Guard(source), files, source))
    except ftplib.error_perm as exc:
        if str(exc)[:3] in ("450", "550"):  # some servers answer an empty folder with "no files"
            return files
        raise
    ftp.voidcmd("TYPE I")  # listing switched to ASCII; SIZE and RETR need binary
    for raw in lines:
        try:
            name = posixpath.basename(raw.decode("utf-8").rstrip("/"))
        except UnicodeDecodeError:
            skip(files, source, raw.decode("utf-8", "replace"), "the name is not valid UTF-8")
            continue
        if name in ("", ".", ".."):
            continue
        try:
            size = _size_of(ftp, name)  # refused for folders: that is how they are told apart here
        except ftplib.error_perm:
            continue
        try:
            mtime = _mdtm(ftp, name)
        except (ValueError, OverflowError) as exc:
            skip(files, source, name, str(exc))
            continue
        entry(files, source, name, size, mtime)
    return files

def _size_of(ftp: ftplib.FTP, name: str) -> int | str:
    """SIZE of ``name``; the raw answer (an impossible size, skipped by the caller) when not a number."""
    reply = ftp.sendcmd(f"SIZE {name}")
    try:
        return _size(reply[3:]) if reply[:3] == "213" else reply[:40]
    except ValueError:
        return reply[3:].strip()[:40]

def _mdtm(ftp: ftplib.FTP, name: str) -> float:
    try:
        reply = ftp.voidcmd(f"MDTM {name}")
    except ftplib.error_perm:
        return 0.0  # unknown age: treated as old, so it is fetched rather than waited for
    return _mtime(reply[3:])
