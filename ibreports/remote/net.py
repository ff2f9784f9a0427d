"""The TCP part every network source shares: resolve, connect, wait for the server to speak.

``fetch``, ``status``, ``doctor`` and ``trust-host`` all connect through these functions,
so a closed port, a dropped SYN or a silent server is described by one sentence and
one remedy wherever it happens. The socket rows of every backend's error table live here.
"""

from __future__ import annotations

import errno
import socket
import time

from ..config import SourceConfig
from ..errors import ConnectionFailure, TooSlowError

MIN_RATE = 1024  # bytes/s: a transfer slower than this over a whole window is dropped
WHITELIST = (
    "IBKR turns away public IPs it has not whitelisted: ask IBKR's Reporting Integration team to whitelist "
    "yours, and check host and port."
)


RETRY = "Retried automatically; if it persists, check the network."
TRY_LATER = "Try again later; if it persists, ask IBKR."
REMOTE_DIR = "Set remote_dir to the folder IBKR delivers to (usually 'outgoing')."


def server_hint(source: SourceConfig) -> str:
    """The kind's own "IBKR's ... server is host port N" line, for remedies."""
    return getattr(source.settings, "ibkr_server", "") or "the server's host and port"


def greeting(source: SourceConfig) -> str:
    """What the kind's server sends first ("SSH banner", "FTP greeting"), for messages."""
    return getattr(source.settings, "greeting", "") or "greeting"


def where(source: SourceConfig) -> str:
    return f"{source.settings.host}:{source.settings.port}"


def resolve(source: SourceConfig) -> list[str]:
    """The host's addresses; ConnectionFailure when DNS has none."""
    try:
        infos = socket.getaddrinfo(source.settings.host, source.settings.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionFailure(
            f"Cannot resolve host {source.settings.host} ({exc.strerror}).",
            "Check the host name in the config (IBKR: xfer.interactivebrokers.com for sFTP, "
            "ftp2.interactivebrokers.com for FTP) and this machine's DNS settings.",
        ) from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def egress_address(ip: str, port: int) -> str:
    """The local address this machine uses towards ``ip`` (a UDP connect sends no packet)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((ip, port))
            return probe.getsockname()[0]
    except OSError:
        return "an unknown address"


def connect_tcp(source: SourceConfig, addresses: list[str]) -> socket.socket:
    """A connected socket to the first address that answers (TCP_NODELAY, source.timeout)."""
    failure: ConnectionFailure | None = None
    for ip in addresses:
        try:
            sock = socket.create_connection((ip, source.settings.port), timeout=source.timeout)
        except OSError as exc:
            failure = tcp_failure(source, ip, exc)
            continue
        sock.settimeout(source.timeout)
        # Like OpenSSH: without it, Nagle holds small SFTP read requests and downloads run ~3x slower.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    if failure is None:
        failure = ConnectionFailure(f"Cannot resolve host {source.settings.host}.", "Check host in the config and this machine's DNS.")
    raise failure


def open_tcp(source: SourceConfig) -> socket.socket:
    """resolve + connect_tcp."""
    return connect_tcp(source, resolve(source))


def tcp_failure(source: SourceConfig, ip: str, exc: OSError) -> ConnectionFailure:
    """The socket rows of the error table: refused, dropped, no route, anything else."""
    at = f"{where(source)} ({ip})"
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionFailure(
            f"{at} refused the connection: nothing listens on port {source.settings.port}.",
            f"Wrong port or host: {server_hint(source)}; check host and port in the "
            "config, and that no local firewall rejects the connection.",
        )
    if isinstance(exc, TimeoutError):
        return ConnectionFailure(
            f"No answer from {at} within {source.timeout:g} s: the connection attempt was dropped.",
            "A firewall or IBKR's IP whitelisting: IBKR must whitelist your public IP; this machine connected "
            f"from {egress_address(ip, source.settings.port)} (behind NAT your public IP is your gateway's). Also make "
            f"sure outgoing TCP port {source.settings.port} is open.",
        )
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return ConnectionFailure(
            f"Cannot connect to {at}: {exc.strerror or exc}.",
            "This machine has no network route to the server: check its network connection, default route "
            f"and proxy settings (it would connect from {egress_address(ip, source.settings.port)}).",
        )
    return ConnectionFailure(f"Cannot connect to {at}: {exc.strerror or exc}.", "Check the network, host and port.")


def idle(source: SourceConfig, during: str) -> ConnectionFailure:
    """A connected server that stopped sending (the per-read time-out)."""
    return ConnectionFailure(
        f"{where(source)} sent nothing for {source.timeout:g} s during {during}.",
        "Retried automatically; if it persists, check the network or raise timeout.",
    )


def broke(source: SourceConfig, during: str, exc: BaseException) -> ConnectionFailure:
    """A connection that was cut (reset, closed, EOF)."""
    return ConnectionFailure(f"The connection to {where(source)} broke during {during} ({type(exc).__name__}).", RETRY)


def silent(source: SourceConfig, waited: float) -> ConnectionFailure:
    """The server accepted TCP and said nothing: a firewall, a stuck proxy, or not our kind of server."""
    return ConnectionFailure(
        f"{where(source)} accepted the TCP connection but sent no {greeting(source)} "
        f"within {waited:g} s.",
        "Something other than the server holds this port, or a firewall or proxy on the path holds the "
        f"connection: check host and port ({server_hint(source)}).",
    )


def closed_before_greeting(source: SourceConfig) -> ConnectionFailure:
    return ConnectionFailure(
        f"{where(source)} closed the connection before sending an {greeting(source)}.",
        WHITELIST,
    )


def wrong_protocol(source: SourceConfig, said: str) -> ConnectionFailure:
    protocol = greeting(source).split()[0]
    return ConnectionFailure(
        f"{where(source)} answered, but not as an {protocol} server (it said {said!r}).",
        f"Wrong port or kind: {server_hint(source)} (IBKR's sFTP server listens on port 32, kind = \"sftp\"; "
        "its FTP server on port 21, kind = \"ftp\").",
    )


def wait_first_line(source: SourceConfig, sock: socket.socket) -> bytes:
    """Peek (without consuming) until the server sent one complete line; the line.

    A server that says nothing within source.timeout, closes first, or fills 4 KiB
    without a line break fails with the sentence doctor prints for it.
    """
    deadline = time.monotonic() + source.timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise silent(source, source.timeout)
            sock.settimeout(remaining)
            try:
                data = sock.recv(4096, socket.MSG_PEEK)
            except TimeoutError:
                raise silent(source, source.timeout) from None
            except OSError as exc:
                raise ConnectionFailure(
                    f"{where(source)} broke the connection before greeting ({exc.strerror or exc}).", WHITELIST,
                ) from None
            if not data:
                raise closed_before_greeting(source)
            if b"\n" in data:
                return data.split(b"\n", 1)[0] + b"\n"
            if len(data) >= 4096:
                raise wrong_protocol(source, "a long line without an end")
            time.sleep(0.01)  # partial line: peeking again at once would spin
    finally:
        sock.settimeout(source.timeout)


class RateGuard:
    """A minimum-rate guard for one transfer: a server trickling bytes cannot hold it for ever.

    The idle time-out only catches a server that sends nothing; this one catches a server that
    sends a byte now and then. Over each window of ``source.timeout`` seconds (at least 1) the
    transfer must average MIN_RATE bytes/s, else TooSlowError.
    """

    def __init__(self, source: SourceConfig, what: str) -> None:
        self.source, self.what = source, what
        self.window = max(1.0, source.timeout)
        self.start = time.monotonic()
        self.got = 0

    def feed(self, nbytes: int) -> None:
        self.got += nbytes
        elapsed = time.monotonic() - self.start
        if elapsed < self.window:
            return
        if self.got < MIN_RATE * elapsed:
            raise TooSlowError(
                f"{where(self.source)} sent {self.got} bytes in {elapsed:.0f} s during {self.what}, below the "
                f"minimum of {MIN_RATE} bytes/s; the transfer was dropped.",
                "The server or the path is stalling: the next run tries again; if it persists, check the network.",
            )
        self.start, self.got = time.monotonic(), 0
