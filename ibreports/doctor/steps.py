"""The network steps every source shares and the sample each offers (results and runner: checklist.py)."""

from __future__ import annotations

import socket
from pathlib import Path

from ..config import SourceConfig
from ..remote import Remote, RemoteFile, net
from .checklist import Checklist, Degraded, Sample, Section, Step  # noqa: F401 - the steps' one import

__all__ = ["CAP", "Checklist", "Degraded", "Sample", "Section", "Step", "connect_tcp", "count_detail",
           "download_sample", "listing_detail", "pick_sample", "resolve"]

CAP = 10.0  # seconds: doctor never waits longer than this for one network step


# -- network steps shared by sFTP and FTP: the same functions fetch connects with ----------------

def resolve(source: SourceConfig) -> tuple[list[str], str]:
    """DNS: the host's addresses."""
    addresses = net.resolve(source)
    return addresses, f"{source.settings.host} -> {', '.join(addresses)}"


def connect_tcp(source: SourceConfig, addresses: list[str]) -> tuple[socket.socket, str]:
    """TCP: a connected socket to the first address that answers."""
    sock = net.connect_tcp(source, addresses)
    ip, local = sock.getpeername()[0], sock.getsockname()[0]
    return sock, f"{ip}:{source.settings.port} from {local}"


# -- the sample file each source offers for the PGP check ---------------------------------------

ENCRYPTED_SUFFIXES = (".pgp", ".gpg", ".asc")
SAMPLE_MAX = 20 * 1024 * 1024  # bytes: a sample is for the key check, not a download test


def pick_sample(files: list[RemoteFile]) -> RemoteFile | None:
    """The smallest encrypted file no bigger than SAMPLE_MAX, or None."""
    candidates = [f for f in files if f.name.lower().endswith(ENCRYPTED_SUFFIXES) and 0 < f.size <= SAMPLE_MAX]
    return min(candidates, key=lambda f: (f.size, f.name)) if candidates else None


def count_detail(folder: str, names: list[str], skipped: int = 0) -> str:
    encrypted = sum(1 for n in names if n.lower().endswith(ENCRYPTED_SUFFIXES))
    extra = f", {skipped} listing entr{'y' if skipped == 1 else 'ies'} skipped (see the log)" if skipped else ""
    return f"{folder}: {len(names)} file(s), {encrypted} encrypted (.pgp/.gpg/.asc){extra}"


def listing_detail(folder: str, files: list[RemoteFile]) -> str:
    """count_detail of a remote's listing, with the entries it skipped."""
    return count_detail(folder, [f.name for f in files], len(getattr(files, "skipped", ())))


def download_sample(source: SourceConfig, remote: Remote, chosen: RemoteFile, staging: Path) -> tuple[Sample, str]:
    """The sample, downloaded with fetch's own download code."""
    dest = staging / f"{source.name}.sample"
    remote.download(chosen.name, dest, chosen.size)
    return Sample(source.name, chosen.name, dest), f"{chosen.name} ({chosen.size} bytes) for the PGP check"
