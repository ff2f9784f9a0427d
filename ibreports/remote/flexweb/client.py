"""The Flex Web Service v3 two-step protocol over httpx: SendRequest, then GetStatement polled.

TLS certificates are always verified (transport.py: the system's CAs, ``SSL_CERT_FILE``
honoured, never disabled). Every request waits for its turn on the token's pacer; the token
goes only to the configured host or a host under the same one of IBKR's domains
(endpoints.py), and never into a message.

GetStatement is asked at IBKR's documented endpoint on the SendRequest host first, and
at the ``<Url>`` the SendRequest answer names only when that endpoint is missing (HTTP
404/405/410) or unreachable. A redirect (3xx) is followed, at most ``REDIRECTS_MAX``
times, only to HTTPS on the configured host's domain. HTTP 429/503 with ``Retry-After``
is waited out when it asks for at most ``RETRY_AFTER_MAX`` seconds. A lost connection is
tried again with backoff for ``reconnect_seconds`` (``[run] reconnect_minutes`` in a
run), at least ``TRANSPORT_ATTEMPTS`` times.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urljoin, urlsplit, urlunsplit

import httpx

from ... import __version__
from ...errors import ConnectionFailure
from .codes import PACE, RESEND, FlexCode, flex_error, lookup
from .endpoints import check_endpoint, get_statement_url, same_site
from .pacing import Pacer, pacer_for
from .redact import protect
from .transport import (
    Missing, Redirect, Transient, read_response, tls_context, tls_failure, verify_failure, where)
from .wire import STATUS_MAX, Status, is_status, parse_status

if TYPE_CHECKING:
    from ...config import SourceConfig

log = logging.getLogger(__name__)

USER_AGENT = f"ibreports/{__version__} Python/{sys.version_info.major}.{sys.version_info.minor}"
TRANSPORT_ATTEMPTS = 3
POLL_MAX = 30.0  # seconds: the longest wait between two polls
PACE_MIN = 1.0  # seconds: the first back-off after a 1018 (IBKR allows one request per second)
PACE_MAX = 60.0  # seconds: IBKR's window is a minute
REDIRECTS_MAX = 5
RETRY_AFTER_MAX = 60.0  # seconds: a longer Retry-After fails the request (waiting it out would hold the run)
BACKOFF_CAP = 15.0  # seconds between two attempts after a lost connection


class Refused(Exception):
    """IBKR answered with an error code (``entry``) and its own ``message`` (bounded, token masked)."""

    def __init__(self, entry: FlexCode, message: str) -> None:
        super().__init__(entry.code)
        self.entry, self.message = entry, message


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
        self.reconnect_seconds = 0.0  # a run sets [run] reconnect_minutes (FlexRemote.produce)
        self.get_url = get_statement_url(url)
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

    def _get(self, url: str, params: dict[str, str], dest: Path | None, *, missing_ok: bool = False
             ) -> bytes | None:
        """GET ``url`` with the token; the body (a status answer is read into memory, a statement is
        streamed into ``dest``); returns the body, or None when it went to ``dest``. Follows redirects
        within IBKR's domain; with ``missing_ok``, HTTP 404/405/410 raises _Missing."""
        attempt = 0
        started = time.monotonic()
        hops = 0
        while True:
            host = urlsplit(url).netloc
            try:
                with self.pacer.turn(), self._http.stream(
                        "GET", url, params={**params, "t": self._token, "v": "3"}) as resp:
                    return read_response(resp, url, dest, missing_ok)
            except Redirect as moved:
                hops += 1
                url, params = self._follow(url, moved.location, params, hops)
                continue
            except httpx.TransportError as exc:
                if verify_failure(exc):
                    raise tls_failure(host) from None
                failure = ConnectionFailure(
                    f"Cannot reach the Flex Web Service at {host} ({type(exc).__name__}).",
                    "Check this machine's network, DNS and proxy settings and that outgoing HTTPS (443) is open; "
                    "run again later if IBKR is under maintenance.",
                )
                if isinstance(exc, httpx.TimeoutException):
                    failure.message = f"No answer from the Flex Web Service at {host} within the time-out."
                wait = None
            except Transient as exc:
                failure = ConnectionFailure(
                    f"The Flex Web Service at {host} answered HTTP {exc.status}.",
                    "A temporary IBKR problem: run again later.",
                )
                wait = exc.retry_after
                if wait is not None and wait > RETRY_AFTER_MAX:
                    failure.message = (f"The Flex Web Service at {host} answered HTTP {exc.status} and asked to "
                                       f"wait {wait:.0f} s (Retry-After) before asking again.")
                    failure.remedy = f"Run again after {wait:.0f} s."
                    raise failure from None
            attempt += 1
            spent = time.monotonic() - started
            if attempt >= TRANSPORT_ATTEMPTS and spent >= self.reconnect_seconds:
                if self.reconnect_seconds and attempt > TRANSPORT_ATTEMPTS:
                    failure.message += (f" It stayed so for {spent:.0f} s ([run] reconnect_minutes "
                                        f"{self.reconnect_seconds / 60:g}).")
                raise failure
            if wait is None:
                wait = min(BACKOFF_CAP, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
                if attempt >= TRANSPORT_ATTEMPTS:
                    wait = min(wait, max(0.5, self.reconnect_seconds - spent))
                log.info("Flex Web Service at %s: %s; trying again in %.1f s", host, failure.message, wait)
                time.sleep(wait)
            else:  # Retry-After: every request with this token waits, as for a 1018
                log.info("Flex Web Service at %s: %s; waiting %.0f s as it asked (Retry-After)", host,
                         failure.message, wait)
                self.pacer.hold(wait)

    def _follow(self, url: str, location: str, params: dict[str, str], hops: int) -> tuple[str, dict[str, str]]:
        """The next URL of a redirect, after checking it may receive the token."""
        here = urlsplit(url).netloc
        target = urlsplit(urljoin(url, location))
        shown = where(urlunsplit(target))
        if target.scheme != "https" or not target.hostname or not same_site(target.hostname, self.host):
            refused = ConnectionFailure(
                f"The Flex Web Service at {here} redirected to {shown}, which is not HTTPS on IBKR's domain; the "
                "redirect was not followed and the token was not sent there.",
                "Check the source's url (leave it out for IBKR's documented endpoint) and any proxy between this "
                "machine and IBKR.",
            )
            refused.retryable = False  # type: ignore[misc]  # asking again meets the same redirect
            raise refused
        if hops > REDIRECTS_MAX:
            raise ConnectionFailure(
                f"The Flex Web Service at {here} redirected more than {REDIRECTS_MAX} times (last to {shown}).",
                "Check the source's url and any proxy between this machine and IBKR; run again later.",
            )
        log.info("Flex Web Service: %s redirected to %s; following", where(url), shown)
        extra = {k: v for k, v in parse_qsl(target.query) if k not in ("t", "v")}
        return urlunsplit((target.scheme, target.netloc, target.path, "", "")), {**extra, **params}

    # -- the two steps ------------------------------------------------------------------------

    def _status(self, body: bytes, url: str) -> Status:
        status = parse_status(body, f"The Flex Web Service at {urlsplit(url).netloc}")
        if status.code is not None or status.status.lower() in ("fail", "warn"):
            raise Refused(lookup(status.code), status.message)
        return status

    def probe(self) -> Status:
        """The service answers over verified TLS (a request without the token: IBKR refuses it, and says so)."""
        where = f"The Flex Web Service at {self.host}"
        url = self.url
        for hops in range(REDIRECTS_MAX + 2):
            try:
                with self._http.stream("GET", url, params={"v": "3"}) as resp:
                    if resp.status_code in (301, 302, 303, 307, 308) and resp.headers.get("location"):
                        url, _ = self._follow(url, resp.headers["location"], {}, hops + 1)
                        continue
                    body = read_response(resp, url, None, False) if resp.status_code == 200 else b""
            except httpx.TransportError as exc:
                if verify_failure(exc):
                    raise tls_failure(self.host) from None
                raise ConnectionFailure(
                    f"Cannot reach the Flex Web Service at {urlsplit(url).netloc} ({type(exc).__name__}).",
                    "Check this machine's network, DNS and proxy settings and that outgoing HTTPS (443) is open.",
                ) from None
            if resp.status_code != 200:
                raise ConnectionFailure(f"{where} answered HTTP {resp.status_code}.",
                                        "Check the source's url (leave it out for IBKR's) and any proxy.")
            return parse_status(body or b"", where)
        raise AssertionError("unreachable: _follow bounds the redirects")

    def send_request(self, query_id: str, fd: str | None = None, td: str | None = None) -> tuple[str, str]:
        """Step 1: ask IBKR to generate the statement; returns (reference code, the <Url> it named)."""
        params = {"q": query_id}
        if fd and td:
            params.update(fd=fd, td=td)
        body = self._get(self.url, params, None)
        status = self._status(body or b"", self.url)
        where = f"The Flex Web Service at {self.host}"
        if status.status.lower() != "success" or not status.reference.isdigit():
            raise ConnectionFailure(
                f"{where} answered SendRequest without a reference code.",
                "Run again later; if it persists, check the source's url.",
            )
        return status.reference, status.url

    def _fallback(self, named: str) -> str | None:
        """The answer's <Url>, when it may receive the token and is not the documented endpoint."""
        target = urlsplit(named)
        if target.scheme != "https" or not target.hostname or not same_site(target.hostname, self.host):
            if named:
                log.warning("Flex Web Service: the GetStatement URL IBKR named (%s) is not HTTPS on the configured "
                            "host's domain; it is not used", where(named))
            return None
        url = urlunsplit((target.scheme, target.netloc, target.path, "", ""))
        return None if url == self.get_url else url

    def get_statement(self, reference: str, dest: Path, named: str = "") -> None:
        """Step 2, once: the statement into ``dest``, from the documented GetStatement endpoint, else from the
        answer's <Url> (``named``); raises Refused while IBKR is not done."""
        url = self.get_url
        try:
            self._get(url, {"q": reference}, dest, missing_ok=True)
        except (Missing, ConnectionFailure) as exc:
            fallback = self._fallback(named)
            first = (f"answered HTTP {exc.status}" if isinstance(exc, Missing) else
                     exc.message.rstrip("."))
            if fallback is None:
                if isinstance(exc, ConnectionFailure):
                    raise
                other = (f"the URL it named ({where(named)}) is not HTTPS on the configured host's domain"
                         if named and urlsplit(named).netloc != urlsplit(url).netloc else "it named no other URL")
                raise ConnectionFailure(
                    f"IBKR's GetStatement endpoint {where(url)} {first}, and for GetStatement the SendRequest "
                    f"answer is no help: {other}.",
                    "Check the source's url (leave it out for IBKR's) and any proxy; run again later.",
                ) from None
            log.warning("Flex Web Service: GetStatement at %s: %s; trying the URL IBKR's answer named (%s)",
                        where(url), first, where(fallback))
            url = fallback
            try:
                self._get(url, {"q": reference}, dest)
            except ConnectionFailure as again:
                again.message = (f"IBKR's GetStatement endpoint {where(self.get_url)}: {first}; the URL its answer "
                                 f"named: {again.message}")
                raise
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
                self.get_statement(reference, dest, url or "")
                return
            except Refused as refused:
                entry = refused.entry
                if entry.retry is None:
                    raise flex_error(entry, what, refused.message) from None
                if entry.code in RESEND:
                    reference = None  # this reference will never be made: ask for a new one
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
    check_endpoint(settings.url)
    token = settings.token.get()
    return FlexClient(
        token, settings.url, timeout=source.timeout,
        pacer=pacer_for(token, settings.min_interval, settings.requests_per_minute),
        poll_interval=settings.poll_interval, poll_timeout=settings.poll_timeout,
    )
