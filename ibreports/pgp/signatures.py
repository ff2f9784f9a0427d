"""Signatures on encrypted deliveries: recorded always, required only when configured.

An unverifiable signature proves nothing either way and the MDC already guards
integrity, so by default a signature never refuses a file; it is recorded as
``<signing key ID> verified`` or ``<signing key ID> unverified`` (``unsigned`` when
there is none). With ``[pgp] signer_keys`` set, a file needs a good signature by one
of those keys. A bad signature (the signed content was altered) is always refused.
"""

from __future__ import annotations

from dataclasses import dataclass

UNSIGNED = "unsigned"
# gpg's signature status keywords and what we record for each.
STATES = {"GOODSIG": "verified", "ERRSIG": "unverified", "BADSIG": "bad", "EXPSIG": "expired",
          "EXPKEYSIG": "expired-key", "REVKEYSIG": "revoked-key"}


@dataclass(frozen=True)
class Signature:
    key_id: str  # long ID of the signing (sub)key
    state: str  # a value of STATES
    primary: str = ""  # primary fingerprint of the signer (VALIDSIG; only when verified)

    def __str__(self) -> str:
        return f"{self.key_id} {self.state}"


def signatures(status: list[list[str]]) -> list[Signature]:
    """The signatures gpg reported, in order."""
    found: list[Signature] = []
    for words in status:
        if words and words[0] in STATES and len(words) > 1:
            found.append(Signature(words[1][-16:], STATES[words[0]]))
        elif words[:1] == ["VALIDSIG"] and found and len(words) > 10:
            last = found[-1]
            found[-1] = Signature(last.key_id, last.state, words[10])
    return found


def describe(found: list[Signature]) -> str:
    """The record: ``unsigned`` or ``<key ID> verified|unverified|...`` joined by ``; ``."""
    return "; ".join(str(s) for s in found) or UNSIGNED


def refusal(found: list[Signature], signers: set[str]) -> str | None:
    """Why the signatures refuse the file (None: accepted). ``signers``: required primary fingerprints."""
    bad = [s for s in found if s.state == "bad"]
    if bad:
        return f"bad signature by key {', '.join(s.key_id for s in bad)} (the signed content was altered)"
    if not signers:
        return None
    if any(s.state == "verified" and s.primary in signers for s in found):
        return None
    wanted = ", ".join(sorted(f[-16:] for f in signers))
    if not found:
        return f"not signed, but [pgp] signer_keys requires a good signature by {wanted}"
    return f"signed by {describe(found)}, not with a good signature by a [pgp] signer_keys key ({wanted})"
