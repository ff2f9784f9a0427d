"""Flex Web Service diagnosis: the service over verified TLS, the token, the IP restriction, each query.

The same client and SendRequest as ``fetch``. A SendRequest that IBKR accepts proves the
token valid, this machine's address allowed and the query valid at once; a refusal says
which of them failed (1011/1012/1015 token, 1013 address, 1010/1014/1016 query). No
statement is downloaded: asking for one is enough, and keeps within IBKR's limits.
"""

from __future__ import annotations

from ..config import SourceConfig
from ..remote.flexweb.client import FlexClient, Refused, open_client
from ..remote.flexweb.codes import flex_error
from ..remote.flexweb.settings import FlexQuery, FlexSettings
from .steps import Checklist

TOKEN_CODES = {1011, 1012, 1015}
IP_CODE = 1013


def check_flexweb(source: SourceConfig, cl: Checklist) -> None:
    """Run every Flex Web Service step for ``source``."""
    settings: FlexSettings = source.settings
    client = cl.step("https", _connect, source)
    if client is None:
        for name in ("token", "ip", *(f"query {q.label}" for q in settings.queries)):
            cl.skip(name, "an earlier step failed")
        return
    try:
        first = settings.queries[0]
        outcome = cl.step("token", _token, client, first)
        cl.step("ip", _ip, outcome)
        for query in settings.queries:
            cl.step(f"query {query.label}", _query, client, query, outcome if query is first else None)
    finally:
        client.close()


def _connect(source: SourceConfig) -> tuple[FlexClient, str]:
    client = open_client(source)
    try:
        client.probe()
    except BaseException:
        client.close()
        raise
    return client, f"{client.host} answers the Flex Web Service over verified TLS"


def _send(client: FlexClient, query: FlexQuery) -> str | Refused:
    try:
        reference, _ = client.send_request(query.id)
        return reference
    except Refused as refused:
        return refused


def _raise(refused: Refused, what: str) -> None:
    raise flex_error(refused.entry, what, refused.message)


def _token(client: FlexClient, query: FlexQuery) -> tuple[str | Refused, str]:
    outcome = _send(client, query)
    if isinstance(outcome, Refused):
        code = outcome.entry.code
        if code in TOKEN_CODES or code not in (IP_CODE, 1003, 1010, 1014, 1016):
            _raise(outcome, "token check")
        if code == IP_CODE:
            return outcome, "recognised by IBKR (it holds an IP restriction for it)"
    return outcome, "valid: IBKR accepted a request made with it"


def _ip(outcome: str | Refused) -> tuple[None, str]:
    if isinstance(outcome, Refused) and outcome.entry.code == IP_CODE:
        _raise(outcome, "IP restriction check")
    return None, "this machine's address is allowed to use the token"


def _query(client: FlexClient, query: FlexQuery, outcome: str | Refused | None) -> tuple[None, str]:
    if outcome is None or (isinstance(outcome, Refused) and outcome.entry.code == IP_CODE):
        outcome = _send(client, query)
    if isinstance(outcome, Refused):
        _raise(outcome, f"query {query.label} ({query.id})")
    named = (f"statements named {query.name}" if query.name else
             "statements named as IBKR names the query (its queryName, as in its sFTP files)")
    return None, f"id {query.id}: IBKR accepted it (reference {outcome}); dates = '{query.dates}'; {named}"

