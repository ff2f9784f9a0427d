"""The Flex Web Service v3 two-step protocol over httpx: SendRequest, then GetStatement polled.

TLS certificates are always verified, against the system's CAs (OpenSSL's default
paths, so ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` are honoured), never certifi's bundle
and never disabled. Every request waits for its turn on the token's pacer; the token
goes only to the configured host (or the GetStatement URL IBKR names on the same
domain) and never into a message.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from ... import __version__
from ...errors import ConfigError, ConnectionFailure, IbreportsError, StatementUnavailable
from ...files import create_private
from .codes import PACE, FlexCode, flex_error, lookup
from .pacing import Pacer, pacer_for
from .redact import protect
from .wire import STATUS_MAX, Status, is_status, parse_status

if TYPE_CHECKING:
    from ...config import SourceConfig

log = logging.getLogger(__name__)

USER_AGENT = f"ibreports/{__version__} Python/{sys.version_info.major}.{sys.version_info.minor}"
STATEMENT_MAX = 2 * 1024**3  # bytes: far above any Flex statement; bounds what a server can make us store
TRANSPORT_ATTEMPTS = 3
POLL_MAX = 30.0  # seconds: the longest wait between two polls
PACE_MIN = 1.0  # seconds: the first back-off after a 1018 (IBKR allows one request per second)
PACE_MAX = 60.0  # seconds: IBKR's window is a minute


def tls_context() -> ssl.SSLContext:
    """Verifying context with the system's CAs; SSL_CERT_FILE / SSL_CERT_DIR win when set."""
    ctx = ssl.create_default_context()  # load_default_certs: OpenSSL's paths and their env overrides
    cafile = os.environ.get("SSL_CERT_FILE")
    if cafile:
        try:
            ctx.load_verify_locations(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"SSL_CERT_FILE names {cafile}, which is not a readable PEM certificate bundle ({exc}).",
                "Point SSL_CERT_FILE at a CA bundle, or unset it to use the system's CAs.",
            ) from None
    return ctx


class Refused(Exception):
    """IBKR answered with an error code (``entry``) and its own ``message`` (bounded, token masked)."""

    def __init__(self, entry: FlexCode, message: str) -> None:
        super().__init__(entry.code)
        self.entry, self.message = entry, message


def _verify_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _tls_failure(host: str) -> ConnectionFailure:
    return ConnectionFailure(
        f"The TLS certificate of {host} did not verify against this machine's CAs.",
        "Install the system CA certificates (ca-certificates), or point SSL_CERT_FILE at a bundle holding the "
        "issuing CA; verification is never turned off. A proxy that intercepts TLS needs its CA added the same way.",
    )


def _same_domain(a: str, b: str) -> bool:
    if a == b:
        return True
    tail = lambda host: ".".join(host.split(".")[-2:])  # noqa: E731
    return not re.fullmatch(r"[\d.:\[\]]+", a) and tail(a) == tail(b)


class FlexClient:
    """One HTTPS client for one token; thread-safe (httpx.Client is)."""

    def __init__(
        self, token: str, url: str, *, timeout: float, pacer: Pacer,
        poll_interval: float = 5.0, poll_timeout: float = 600.0,
    ) -> None:
        protect(token)
        self._token = token
        self.url = url
        self.host = urlsplit(url).hostname or ""
        self.pacer = pacer
        self.poll_interval = poll_interval
        self.poll_timeout = poll_timeout
        self._http = httpx.Client(
            verify=tls_context(), timeout=httpx.Timeout(timeout), follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "FlexClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one HTTP GET, paced, with transport retries -------------------------------------------

    def _get(self, url: str, params: dict[str, str], dest: Path | None) -> bytes | None:
        """GET ``url`` with the token; the body (a status answer is read into memory, a statement is
        streamed into ``dest``); returns the body, or None when it went to ``dest``."""
        host = urlsplit(url).netloc
        for attempt in range(1, TRANSPORT_ATTEMPTS + 1):
            try:
                with self.pacer.turn(), \
                        self._http.stream("GET", url, params={"t": self._token, **params, "v": "3"}) as resp:
                    return self._read(resp, host, dest)
            except httpx.TransportError as exc:
                if _verify_failure(exc):
                    raise _tls_failure(host) from None
                failure = ConnectionFailure(
                    f"Cannot reach the Flex Web Service at {host} ({type(exc).__name__}).",
                    "Check this machine's network, DNS and proxy settings and that outgoing HTTPS (443) is open; "
                    "run again later if IBKR is under maintenance.",
                )
                if isinstance(exc, httpx.TimeoutException):
                    failure.message = f"No answer from the Flex Web Service at {host} within the time-out."
            except _Transient as exc:
                failure = ConnectionFailure(
                    f"The Flex Web Service at {host} answered HTTP {exc.status}.",
                    "A temporary IBKR problem: run again later.",
                )
            if attempt < TRANSPORT_ATTEMPTS:
                log.info("Flex Web Service at %s: %s; trying again", host, failure.message)
                time.sleep(attempt)
        raise failure

    def _read(self, resp: httpx.Response, host: str, dest: Path | None) -> bytes | None:
        if resp.status_code in (429,) or resp.status_code >= 500:
            raise _Transient(resp.status_code)
        if resp.status_code == 404:
            raise ConfigError(
                f"The Flex Web Service URL on {host} answered HTTP 404: it is not IBKR's SendRequest endpoint.",
                "Leave the source's url out to use IBKR's, or fix its path.",
            )
        if resp.status_code != 200:
            raise ConnectionFailure(
                f"The Flex Web Service at {host} answered HTTP {resp.status_code}.",
                "Check the source's url and any proxy; run again later.",
            )
        if dest is None:
            body = bytearray()
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > STATUS_MAX:
                    raise ConnectionFailure(
                        f"The Flex Web Service at {host} sent an oversized answer to a request.",
                        "Check the source's url and any proxy between this machine and IBKR.",
                    )
            return bytes(body)
        size = 0
        dest.unlink(missing_ok=True)  # what an interrupted attempt left
        try:
            with os.fdopen(create_private(dest), "wb") as out:
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > STATEMENT_MAX:
                        raise StatementUnavailable(
                            f"The Flex statement from {host} is larger than {STATEMENT_MAX >> 30} GiB; it was not "
                            "kept.",
                            "Split the query (fewer accounts or sections, or shorter date ranges).",
                        )
                    out.write(chunk)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return None

    # -- the two steps ------------------------------------------------------------------------

    def _status(self, body: bytes, url: str) -> Status:
        status = parse_status(body, f"The Flex Web Service at {urlsplit(url).netloc}")
        if status.code is not None or status.status.lower() in ("fail", "warn"):
            raise Refused(lookup(status.code), status.message)
        return status

    def probe(self) -> Status:
        """The service answers over verified TLS (a request without the token: IBKR refuses it, and says so)."""
        where = f"The Flex Web Service at {self.host}"
        try:
            with self._http.stream("GET", self.url, params={"v": "3"}) as resp:
                body = self._read(resp, self.host, None) if resp.status_code == 200 else b""
        except httpx.TransportError as exc:
            if _verify_failure(exc):
                raise _tls_failure(self.host) from None
            raise ConnectionFailure(
                f"Cannot reach the Flex Web Service at {self.host} ({type(exc).__name__}).",
                "Check this machine's network, DNS and proxy settings and that outgoing HTTPS (443) is open.",
            ) from None
        if resp.status_code != 200:
            raise ConnectionFailure(f"{where} answered HTTP {resp.status_code}.",
                                    "Check the source's url (leave it out for IBKR's) and any proxy.")
        return parse_status(body or b"", where)

    def send_request(self, query_id: str, fd: str | None = None, td: str | None = None) -> tuple[str, str]:
        """Step 1: ask IBKR to generate the statement; returns (reference code, GetStatement URL)."""
        params = {"q": query_id}
        if fd and td:
            params.update(fd=fd, td=td)
        body = self._get(self.url, params, None)
        status = self._status(body or b"", self.url)
        where = f"The Flex Web Service at {self.host}"
        if status.status != "Success" or not status.reference.isdigit() or not status.url:
            raise ConnectionFailure(
                f"{where} answered SendRequest without a reference code and URL.",
                "Run again later; if it persists, check the source's url.",
            )
        target = urlsplit(status.url)
        if target.scheme != "https" or not target.hostname or not _same_domain(target.hostname, self.host):
            raise ConnectionFailure(
                f"{where} named a GetStatement URL on another host ({target.hostname or '?'}); the token was not "
                "sent there.",
                "Check the source's url and any proxy between this machine and IBKR.",
            )
        return status.reference, status.url

    def get_statement(self, url: str, reference: str, dest: Path) -> None:
        """Step 2, once: the statement into ``dest``; raises Refused while IBKR is not done."""
        self._get(url, {"q": reference}, dest)
        with open(dest, "rb") as fh:
            head = fh.read(STATUS_MAX + 1)
        if len(head) <= STATUS_MAX and is_status(head):
            dest.unlink()
            self._status(head, url)
            raise ConnectionFailure(
                f"The Flex Web Service at {urlsplit(url).netloc} answered GetStatement with a status but no statement.",
                "Run again later.",
            )

    def fetch(self, query_id: str, what: str, dest: Path, fd: str | None = None, td: str | None = None) -> None:
        """Both steps for one query (and date window), waiting and backing off as IBKR asks."""
        start = time.monotonic()
        delay = self.poll_interval
        paced = 0
        reference = url = None
        while True:
            try:
                if reference is None:
                    reference, url = self.send_request(query_id, fd, td)
                    log.info("Flex Web Service: %s requested (reference %s)", what, reference)
                    time.sleep(min(self.poll_interval, self.poll_timeout))
                self.get_statement(url, reference, dest)
                return
            except Refused as refused:
                entry = refused.entry
                if entry.retry is None:
                    raise flex_error(entry, what, refused.message) from None
                if entry.retry == PACE:
                    base = max(PACE_MIN, self.pacer.min_interval, 60.0 / self.pacer.per_minute)
                    wait = min(PACE_MAX, base * 2**paced)
                    paced += 1
                else:
                    paced = 0  # IBKR let a request through: the token's minute has room again
                    wait, delay = delay, min(delay * 1.5, POLL_MAX)
                elapsed = time.monotonic() - start
                if elapsed + wait > self.poll_timeout:
                    raise flex_error(entry, what, refused.message, waited=elapsed) from None
                log.info("Flex Web Service: %s: %s (%s); asking again in %.1f s", what, entry.code,
                         entry.meaning, wait)
                if entry.retry == PACE:
                    self.pacer.hold(wait)  # every request with this token waits, not only this one
                else:
                    time.sleep(wait)


def open_client(source: "SourceConfig") -> FlexClient:
    """The client for a flexweb source (its token resolved, its token's pacer shared)."""
    settings = source.settings
    token = settings.token.get()
    return FlexClient(
        token, settings.url, timeout=source.timeout,
        pacer=pacer_for(token, settings.min_interval, settings.requests_per_minute),
        poll_interval=settings.poll_interval, poll_timeout=settings.poll_timeout,
    )


class _Transient(IbreportsError):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
