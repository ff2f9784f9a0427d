"""Where the Flex Web Service lives: the documented endpoints, the legacy ones, and which hosts are IBKR's.

IBKR documents SendRequest and GetStatement at ``/AccountManagement/FlexWebService/`` on
``ndcdyn.interactivebrokers.com``. The ``<Url>`` a SendRequest answer names is often the
legacy ``gdcdyn`` host with a ``/Universal/servlet/FlexStatementService.GetStatement``
path, which users of other clients have seen fail to resolve; it is only a fallback. The
legacy ``/Universal/servlet/FlexStatementService.SendRequest`` endpoint answers 1001
("could not be generated") for ever, so a URL other than the documented endpoint is
refused at once, naming the documented one.

A host is trusted with the token when it is the configured host itself, or when both are
under the same one of IBKR's registrable domains below (an explicit list, so
``interactivebrokers.co.uk`` is one domain and ``evil.co.uk`` is not IBKR's, which a
"last two labels" rule gets wrong; no public-suffix list is fetched).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from ...errors import ConfigError

DOCUMENTED_URL = "https://ndcdyn.interactivebrokers.com/AccountManagement/FlexWebService/SendRequest"
SEND_PATH = "/AccountManagement/FlexWebService/SendRequest"
GET_PATH = "/AccountManagement/FlexWebService/GetStatement"
LEGACY_MARK = "/Universal/servlet/"
IBKR_DOMAINS = (
    "interactivebrokers.com", "interactivebrokers.co.uk", "interactivebrokers.eu", "interactivebrokers.ca",
    "interactivebrokers.com.au", "interactivebrokers.com.hk", "interactivebrokers.co.jp", "interactivebrokers.co.in",
    "interactivebrokers.com.sg", "interactivebrokers.ie", "interactivebrokers.hu", "ibllc.com", "ibkr.com",
    "ibkr.info",
)


def registrable(host: str) -> str | None:
    """IBKR's registrable domain ``host`` is under (``None``: not one of IBKR's)."""
    host = host.lower().rstrip(".")
    for domain in sorted(IBKR_DOMAINS, key=len, reverse=True):
        if host == domain or host.endswith("." + domain):
            return domain
    return None


def same_site(host: str, anchor: str) -> bool:
    """True when the token may go to ``host``, given that the configured host is ``anchor``."""
    host, anchor = host.lower().rstrip("."), anchor.lower().rstrip(".")
    if host == anchor:
        return True
    domain = registrable(anchor)
    return domain is not None and registrable(host) == domain


def check_endpoint(url: str) -> None:
    """ConfigError, naming the documented URL, for a SendRequest URL that is not the documented endpoint."""
    path = urlsplit(url).path
    if path.rstrip("/") == SEND_PATH:
        return
    if LEGACY_MARK in path:
        raise ConfigError(
            f"The flexweb source's url ({_shown(url)}) is IBKR's old FlexStatementService endpoint, which answers "
            "error 1001 (statement could not be generated) for every request.",
            f"Set url to {DOCUMENTED_URL}, or leave it out.",
        )
    raise ConfigError(
        f"The flexweb source's url ({_shown(url)}) is not IBKR's documented Flex Web Service endpoint (the path "
        f"must be {SEND_PATH}).",
        f"Set url to {DOCUMENTED_URL}, or leave it out.",
    )


def get_statement_url(send_url: str) -> str:
    """IBKR's documented GetStatement endpoint on the SendRequest URL's host."""
    parts = urlsplit(send_url)
    return urlunsplit((parts.scheme, parts.netloc, GET_PATH, "", ""))


def _shown(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))[:200]
