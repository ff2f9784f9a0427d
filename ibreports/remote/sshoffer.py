"""What the SSH server offered, for the one error a shared-nothing handshake deserves.

paramiko raises ``IncompatiblePeer("... (no acceptable kex algorithm)")`` and keeps nothing of the
server's KEXINIT. :class:`OfferTransport` records it, so the error names the algorithms on both
sides and says whether ``disabled_algorithms`` is the cause (remove the name) or the server offers
only names paramiko lacks (nothing to set here: ask IBKR or the server's admin).
"""

from __future__ import annotations

import paramiko
from paramiko.message import Message

from ..configmodel import SourceConfig
from ..errors import ConnectionFailure

# paramiko's words in IncompatiblePeer -> (what, disabled_algorithms key, the offer's lists, our list, sshd option)
CATEGORIES = (
    ("kex algorithm", ("key exchange", "kex", ("kex_algo_list",), "preferred_kex", "KexAlgorithms")),
    ("host key", ("host key", "keys", ("server_key_algo_list",), "preferred_keys", "HostKeyAlgorithms")),
    ("ciphers", ("cipher", "ciphers", ("client_encrypt_algo_list", "server_encrypt_algo_list"), "preferred_ciphers",
                 "Ciphers")),
    ("macs", ("MAC", "macs", ("client_mac_algo_list", "server_mac_algo_list"), "preferred_macs", "MACs")),
)
NOT_ALGORITHMS = ("ext-info-", "kex-strict-")  # markers in the kex list, not algorithms
# The same algorithm under two names: a server offering one, we the other.
ALIASES = {"curve25519-sha256": "curve25519-sha256@libssh.org"}


class OfferTransport(paramiko.Transport):
    """A client transport that keeps the server's KEXINIT lists in ``server_offer``."""

    server_offer: dict | None = None

    def _parse_kex_init(self, m: Message) -> None:
        try:
            self.server_offer = self._really_parse_kex_init(Message(m.asbytes()))
        except Exception:  # noqa: BLE001 - a malformed KEXINIT: paramiko's own parse says why
            self.server_offer = None
        super()._parse_kex_init(m)


def mismatch(exc: paramiko.IncompatiblePeer, source: SourceConfig, at: str,
             transport: paramiko.Transport | None) -> ConnectionFailure:
    """The error for a handshake that found no common algorithm, naming both sides' lists."""
    text = str(exc)
    offer = getattr(transport, "server_offer", None)
    for words, (what, key, lists, ours_attr, option) in CATEGORIES:
        if words in text and offer is not None:
            break
    else:
        return ConnectionFailure(
            f"{at} shares no SSH algorithm with us ({text}).",
            "Run ibreports doctor --debug to see both sides' algorithm lists, and ask IBKR or the server's admin "
            "to enable one that paramiko supports.",
        )
    offered = list(dict.fromkeys(a for name in lists for a in offer.get(name, []) if a and not a.startswith(NOT_ALGORITHMS)))
    ours = list(getattr(transport, ours_attr))
    disabled = list((getattr(source.settings, "disabled_algorithms", None) or {}).get(key, []))
    blocked = [a for a in offered if a in disabled]
    listed = f"the server offers {', '.join(offered) or 'none'}; we support {', '.join(ours) or 'none'}"
    if blocked:
        return ConnectionFailure(
            f"{at} shares no SSH {what} algorithm with us: {listed}, and this source's disabled_algorithms "
            f"turns off {', '.join(blocked)}.",
            f"Remove {', '.join(blocked)} from disabled_algorithms.{key} of source {source.name}.",
        )
    aliases = [f"{ALIASES[a]} (the same algorithm as {a}, under its other name)" for a in offered if a in ALIASES]
    wanted = ", ".join(aliases + [a for a in ours if a not in ALIASES.values() or not aliases])
    return ConnectionFailure(
        f"{at} offers only SSH {what} algorithms that ibreports (paramiko {paramiko.__version__}) lacks: {listed}"
        + (" (disabled_algorithms is not the cause: nothing it disables is offered)." if disabled else "."),
        f"No setting here can add an algorithm: ask IBKR (or the server's admin) to also enable one of: {wanted} "
        f"(OpenSSH's sshd: {option}).",
    )
