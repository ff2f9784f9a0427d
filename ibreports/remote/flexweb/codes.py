"""Every Flex Web Service error code, mapped to our error family with the remedy to apply.

IBKR answers a refused SendRequest or GetStatement with a ``FlexStatementResponse``
holding ``<ErrorCode>`` and ``<ErrorMessage>`` (HTTP status 200). Codes fall in three
groups: ``WAIT`` (the statement is being made or data is not final yet: ask again
later, up to the poll time limit), ``PACE`` (1018: too many requests from this token:
slow down, then ask again) and final codes (retrying cannot help).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import AuthenticationError, ConfigError, ConnectionFailure, IbreportsError, StatementUnavailable

PORTAL = "Client Portal > Performance & Reports > Flex Queries"
WEB_SERVICE = f"{PORTAL} > Flex Web Service Configuration"
NEW_TOKEN = (
    f"Generate a new token in {WEB_SERVICE} (choose how long it stays valid, up to a year), then update the "
    "secret the source's token refers to."
)

WAIT = "wait"
PACE = "pace"
# IBKR could not make this statement (1001) or was too loaded to (1009): polling the same reference
# again only repeats the answer, so a new SendRequest is made (within poll_timeout). 1019, 1021 and
# 1004-1008 say the statement is on its way: the same reference is polled again.
RESEND = frozenset({1001, 1009})


@dataclass(frozen=True)
class FlexCode:
    """One IBKR error code: what it means, the error we raise, what the user should do."""

    code: int
    meaning: str
    error: type[IbreportsError]
    remedy: str
    retry: str | None = None  # WAIT, PACE or None (final)


_NOT_READY = "IBKR has not finished this statement's data yet"
_LATER = "Run the fetch again later (Activity statements are final after IBKR's end-of-day processing)."

CODES: dict[int, FlexCode] = {c.code: c for c in (
    FlexCode(1001, "IBKR could not generate the statement at this time", ConnectionFailure,
             "A temporary IBKR problem: run again later.", WAIT),
    FlexCode(1003, "IBKR has no statement for this query and period", StatementUnavailable,
             "Check the query's period (or the dates asked for): a day before the account opened, a future day "
             "or today's not yet final data have no statement."),
    FlexCode(1004, f"{_NOT_READY} (statement incomplete)", StatementUnavailable, _LATER, WAIT),
    FlexCode(1005, f"{_NOT_READY} (settlement data)", StatementUnavailable, _LATER, WAIT),
    FlexCode(1006, f"{_NOT_READY} (FIFO P/L data)", StatementUnavailable, _LATER, WAIT),
    FlexCode(1007, f"{_NOT_READY} (MTM P/L data)", StatementUnavailable, _LATER, WAIT),
    FlexCode(1008, f"{_NOT_READY} (MTM and FIFO P/L data)", StatementUnavailable, _LATER, WAIT),
    FlexCode(1009, "IBKR's server is under heavy load and could not generate the statement", ConnectionFailure,
             "A temporary IBKR problem: run again later.", WAIT),
    FlexCode(1010, "the query is a legacy Flex query, which the Flex Web Service no longer serves", ConfigError,
             f"Re-create it as an Activity (or Trade Confirmation) Flex query in {PORTAL} and put the new query's "
             "id in the source's queries."),
    FlexCode(1011, "the Flex Web Service is not active for this account", AuthenticationError,
             f"Activate it in {WEB_SERVICE} (tick Flex Web Service Status, Save), then generate a token."),
    FlexCode(1012, "the token has expired", AuthenticationError, NEW_TOKEN),
    FlexCode(1013, "the token may not be used from this machine's IP address", AuthenticationError,
             f"Add this machine's public IP to the token's allowed list (the token's 'Valid For IP Address' in "
             f"{WEB_SERVICE}; behind NAT it is your gateway's public address), or generate a token without an IP "
             "restriction."),
    FlexCode(1014, "the query id is not a Flex query of this token's user", ConfigError,
             f"Check the query's id in {PORTAL} (the number shown by the query's info icon) and that the token "
             "belongs to the same user."),
    FlexCode(1015, "the token is not valid", AuthenticationError,
             f"Copy the current token from {WEB_SERVICE} into the secret the source's token refers to (a newly "
             "generated token invalidates the previous one)."),
    FlexCode(1016, "the account is not valid for this query", ConfigError,
             f"Check the accounts selected in the query in {PORTAL}."),
    FlexCode(1017, "the statement's reference code was not valid (it may have expired)", StatementUnavailable,
             "Run the fetch again: it asks IBKR for a new statement."),
    FlexCode(1018, "too many requests have been made with this token", ConnectionFailure,
             "Make sure no other program uses this token at the same time (IBKR allows 1 request per second and "
             "10 per minute per token), or lower requests_per_minute; then run again.", PACE),
    FlexCode(1019, "IBKR is still generating the statement", StatementUnavailable,
             "Large statements take longer: run again later, or raise poll_timeout.", WAIT),
    FlexCode(1020, "IBKR found the request invalid", ConfigError,
             "Check the token and the query id, and that a date range is at most 365 days, not in the future and "
             "in the query's reach (dates in yyyymmdd)."),
    FlexCode(1021, "IBKR could not retrieve the statement at this time", ConnectionFailure,
             "A temporary IBKR problem: run again later.", WAIT),
)}


def lookup(code: int | None) -> FlexCode:
    """The entry for ``code``; an unknown code is a final StatementUnavailable that names it."""
    if code in CODES:
        return CODES[code]
    return FlexCode(code or 0, f"IBKR refused the request with error code {code}", StatementUnavailable,
                    "See IBKR's Flex Web Service error codes; run again later if the message says so.")


def flex_error(entry: FlexCode, what: str, server_message: str = "", waited: float | None = None) -> IbreportsError:
    """The error to raise for ``entry`` about ``what`` (e.g. "query DailyActivity (123456)")."""
    said = f' (IBKR said: "{server_message}")' if server_message else ""
    after = f" after waiting {waited:.0f} s" if waited else ""
    return entry.error(f"Flex Web Service, {what}: error {entry.code}, {entry.meaning}{after}{said}.", entry.remedy,
                       code=entry.code)  # the code lets callers tell 1003 from the rest
