"""The HTTP layer of the Flex Web Service client: TLS, what an answer's status means, bounded bodies.

TLS certificates are always verified, against the system's CAs (OpenSSL's default paths, so
``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` are honoured), never certifi's bundle and never disabled.
"""

from __future__ import annotations

import email.utils
import os
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from ...errors import ConfigError, ConnectionFailure, IbreportsError, StatementUnavailable
from ...files import create_private
from .wire import STATUS_MAX

STATEMENT_MAX = 2 * 1024**3  # bytes: far above any Flex statement; bounds what a server can make us store
MISSING = (404, 405, 410)  # the documented GetStatement endpoint is not there: try the answer's <Url>


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


def verify_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def tls_failure(host: str) -> ConnectionFailure:
    return ConnectionFailure(
        f"The TLS certificate of {host} did not verify against this machine's CAs.",
        "Install the system CA certificates (ca-certificates), or point SSL_CERT_FILE at a bundle holding the "
        "issuing CA; verification is never turned off. A proxy that intercepts TLS needs its CA added the same way.",
    )


def where(url: str) -> str:
    """scheme://host/path of ``url``: never its query (the token)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))[:200]


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date); None when absent or unreadable."""
    value = (value or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Redirect(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class Missing(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def read_response(resp: httpx.Response, url: str, dest: Path | None, missing_ok: bool) -> bytes | None:
    """The answer's body (into memory, or streamed into ``dest``), after its status: a redirect, a transient
    status, a missing endpoint (with ``missing_ok``) or another failure raise."""
    host = urlsplit(url).netloc
    status = resp.status_code
    if status in (301, 302, 303, 307, 308) and resp.headers.get("location"):
        raise Redirect(resp.headers["location"])
    if status == 429 or status >= 500:
        raise Transient(status, retry_after(resp.headers.get("retry-after")))
    if missing_ok and status in MISSING:
        raise Missing(status)
    if status == 404:
        raise ConfigError(
            f"The Flex Web Service URL {where(url)} answered HTTP 404: it is not IBKR's endpoint.",
            "Leave the source's url out to use IBKR's, or fix its path.",
        )
    if status == 403:
        raise ConnectionFailure(
            f"The Flex Web Service at {host} refused the request (HTTP 403).",
            "IBKR refuses requests without a User-Agent header: check that no proxy strips it; check the "
            "source's url; run again later.",
        )
    if status != 200:
        raise ConnectionFailure(
            f"The Flex Web Service at {host} answered HTTP {status}.",
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


class Transient(IbreportsError):
    def __init__(self, status: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.retry_after = status, retry_after
