"""Secret keys, each loaded on its own: its own passphrase, its own verdict.

A key that cannot be used (wrong or missing passphrase, no secret encryption subkey,
a public key) becomes a KeyProblem: reported once per run, failing only the files
encrypted to it. Passphrases go to the agent once (PRESET_PASSPHRASE over stdin), so
a decryption never carries one and several keys may each have their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import ConfigError
from .gpgrun import gpg, run, status

# Used when a passphrase is handed over as a plain string (not from the config file).
PASSPHRASE_REMEDY = "Set IBREPORTS_KEY_PASSPHRASE (or [pgp] passphrase) to the passphrase of that key."
# The minimum S2K count: the agent re-protects imported keys cheaply (the home dies with the run);
# presets never expire for the life of the home.
PROBE_TEXT = b"ibreports key check"
AGENT_CONF = "s2k-count 65536\ndisable-scdaemon\nallow-preset-passphrase\n"


class SecretLike(Protocol):
    reference: str
    where: str

    def get(self) -> str: ...


@dataclass(frozen=True)
class KeySpec:
    """One ``[pgp] secret_key_file`` entry and the passphrase that applies to it."""

    file: Path
    passphrase: SecretLike | str | None = None


@dataclass
class KeyProblem:
    """A key that cannot be used, and the key IDs of the files it would have decrypted."""

    file: Path
    fingerprint: str
    key_ids: frozenset[str]
    reason: str  # "locked" (passphrase) | "no-key" (no usable secret encryption subkey)
    error: ConfigError


@dataclass
class Key:
    """One primary key from a key file, with the long IDs of all its (sub)keys."""

    spec: KeySpec
    fingerprint: str
    key_ids: list[str]
    passphrase: str | None = None
    grips: dict[str, str] = field(default_factory=dict)  # encryption subkey fingerprint -> keygrip


def passphrase_remedy(secret: SecretLike | str | None) -> str:
    """What to fix, naming the reference actually configured for that key."""
    own = "or give this key its own: { file = \"...\", passphrase = \"env:NAME\" } in [pgp] secret_key_file."
    if secret is None:
        return f"Set [pgp] passphrase (e.g. \"env:IBREPORTS_KEY_PASSPHRASE\"), {own}"
    if isinstance(secret, str):
        return PASSPHRASE_REMEDY
    kind, _, rest = secret.reference.partition(":")
    where = f"{secret.where} = \"{secret.reference}\"" if kind in ("env", "file", "prefect") else secret.where
    if kind == "env":
        return f"Set the environment variable {rest} ({where}) to the passphrase of that key, {own}"
    if kind == "file":
        return f"Put the passphrase of that key in {rest} ({where}), {own}"
    if kind == "prefect":
        return f"Store the passphrase of that key in the Prefect Secret block '{rest}' ({where}), {own}"
    return f"Fix the passphrase written in {where}, {own}"


def _describe(secret: SecretLike | str | None) -> str:
    if secret is None or isinstance(secret, str):
        return "The PGP passphrase"
    ref = secret.reference
    return f"The passphrase from {ref} ({secret.where})" if ref != "inline" else f"The passphrase in {secret.where}"


def init_home(home: Path) -> None:
    """The agent's settings, before anything starts it."""
    (home / "gpg-agent.conf").write_text(AGENT_CONF)


def inspect(home: Path, spec: KeySpec) -> tuple[list[Key], list[KeyProblem]]:
    """The primary keys of a key file (``gpg --show-keys``, nothing imported); a public key
    file, or one that holds no key, is a problem, not an exception."""
    lines = gpg(home, "--with-colons", "--show-keys", str(spec.file)).stdout.decode("utf-8", "replace").splitlines()
    keys: list[Key] = []
    public: list[Key] = []
    for i, line in enumerate(lines):
        f = line.split(":")
        if f[0] in ("sec", "pub") and i + 1 < len(lines) and lines[i + 1].startswith("fpr:"):
            key = Key(spec, lines[i + 1].split(":")[9], [f[4]])
            (keys if f[0] == "sec" else public).append(key)
        elif f[0] in ("ssb", "sub") and (keys or public):
            (keys if f[0] == "ssb" else public)[-1].key_ids.append(f[4])
    problems = [
        KeyProblem(spec.file, k.fingerprint, frozenset(k.key_ids), "no-key", ConfigError(
            f"{spec.file} holds no PGP secret key (it is a public key).",
            "Point [pgp] secret_key_file at the armored secret key (ibkr_pgp_secret.asc).",
        )) for k in public
    ]
    if not keys and not problems:
        problems.append(KeyProblem(spec.file, "", frozenset(), "no-key", ConfigError(
            f"{spec.file} holds no PGP secret key.",
            "Point [pgp] secret_key_file at the armored secret key (ibkr_pgp_secret.asc).",
        )))
    if keys and spec.passphrase is not None and not isinstance(spec.passphrase, str):
        try:
            passphrase: str | None = spec.passphrase.get()
        except ConfigError as exc:  # e.g. env:OLD_KEY_PASSPHRASE not set: this key only
            return [], problems + [_locked(k, exc.message, exc.remedy) for k in keys]
    else:
        passphrase = spec.passphrase if isinstance(spec.passphrase, str) else None
    if passphrase is not None and any(c in passphrase for c in "\r\n\0"):
        return [], problems + [
            _locked(k, f"{_describe(spec.passphrase)} contains a line break or NUL.",
                    passphrase_remedy(spec.passphrase)) for k in keys
        ]
    for key in keys:
        key.passphrase = passphrase
    return keys, problems


def _locked(key: Key, message: str, remedy: str) -> KeyProblem:
    return KeyProblem(key.spec.file, key.fingerprint, frozenset(key.key_ids), "locked", ConfigError(message, remedy))


def prepare_home(home: Path, keys: list[Key], signer_files: list[Path]) -> dict[str, KeyProblem]:
    """Import ``keys`` (and the signers' public keys) into ``home``, hand each key's passphrase
    to the agent and prove with a tiny message that it decrypts. Returns problems by fingerprint."""
    for path in [*(k.spec.file for k in keys), *signer_files]:
        gpg(home, "--import", str(path), timeout=120)
    listing = gpg(home, "--with-colons", "--with-keygrip", "--list-secret-keys").stdout.decode("utf-8", "replace")
    subkeys = _encryption_subkeys(listing)
    problems: dict[str, KeyProblem] = {}
    unlocked: set[str] = set()
    for key in keys:
        if key.fingerprint in unlocked:
            continue  # the same key from another file, already unlocked: another preset would replace its passphrase
        usable, stubs = subkeys.get(key.fingerprint, ([], 0))
        if not usable:
            fpr = key.fingerprint
            remedy = (f"Export the complete secret key where it was made (gpg --armor --export-secret-keys {fpr})."
                      if stubs else
                      f"Add one: gpg --quick-add-key {fpr} rsa3072 encr, then export the key again "
                      f"(gpg --armor --export-secret-keys {fpr}) and upload its public key to IBKR.")
            problems[fpr] = KeyProblem(key.spec.file, fpr, frozenset(key.key_ids), "no-key", ConfigError(
                f"The PGP key in {key.spec.file} has no secret encryption subkey, so it cannot decrypt.", remedy))
            continue
        if key.passphrase is not None:
            commands = "".join(f"PRESET_PASSPHRASE {grip} -1 {key.passphrase.encode().hex().upper()}\n"
                               for _, _, grip in usable)
            run(["gpg-connect-agent", "--homedir", str(home)], stdin=commands.encode() + b"/bye\n", timeout=60)
        for keyid, fpr, _ in usable:
            problem = _probe(home, key, keyid, fpr)
            if problem is not None:
                problems[key.fingerprint] = problem
                break
        else:  # every subkey decrypts: an earlier copy's wrong passphrase no longer counts
            unlocked.add(key.fingerprint)
            problems.pop(key.fingerprint, None)
    for fpr in problems:
        # gpg stops at the first key it cannot unlock: a locked key must not hide a usable one
        # of a message encrypted to both. Its key IDs stay known for the messages that need it.
        gpg(home, "--yes", "--delete-secret-keys", fpr)
    return problems


def holds_secret_encryption_key(home: Path, data: bytes, fpr: str) -> bool:
    """True when ``data`` (an exported secret key) carries the secret part of an encryption (sub)key of
    ``fpr``: gpg can export the primary key and drop a subkey it failed to unprotect, with only a warning."""
    gpg(home, "--import", stdin=data, timeout=120)
    listing = gpg(home, "--with-colons", "--with-keygrip", "--list-secret-keys").stdout.decode("utf-8", "replace")
    usable, _ = _encryption_subkeys(listing).get(fpr, ([], 0))
    return bool(usable)


def _encryption_subkeys(listing: str) -> dict[str, tuple[list[tuple[str, str, str]], int]]:
    """primary fingerprint -> ([(key ID, fingerprint, keygrip)] of secret encryption (sub)keys,
    number of encryption subkeys whose secret part is missing)."""
    result: dict[str, tuple[list[tuple[str, str, str]], int]] = {}
    primary = None
    current: list[str] | None = None
    for line in listing.splitlines():
        f = line.split(":")
        if f[0] in ("sec", "ssb"):
            current = [f[4], "", "", f[11] if len(f) > 11 else "", f[14] if len(f) > 14 else "", f[0]]
        elif f[0] == "fpr" and current is not None and not current[1]:
            current[1] = f[9]
            if current[5] == "sec":
                primary = f[9]
                result.setdefault(primary, ([], 0))
        elif f[0] == "grp" and current is not None and primary is not None:
            current[2] = f[9]
            keyid, fpr, grip, cap, token, _ = current
            if "e" in cap:  # the key's own capabilities are lower case
                usable, stubs = result[primary]
                if token == "+":  # "#": the secret part is missing (a stub)
                    usable.append((keyid, fpr, grip))
                else:
                    result[primary] = (usable, stubs + 1)
            current = None
    return result


def _probe(home: Path, key: Key, keyid: str, fpr: str) -> KeyProblem | None:
    """Decrypt a tiny message to subkey ``fpr`` with no passphrase given: the agent must have it."""
    probe, plain = home / "probe.pgp", home / "probe.out"
    try:
        enc = gpg(home, "--yes", "--recipient", f"{fpr}!", "--output", str(probe), "--encrypt", stdin=PROBE_TEXT)
        if enc.returncode != 0 or not probe.exists():
            return None  # an expired subkey cannot be encrypted to; decryption still works later
        dec = gpg(home, "--yes", "--output", str(plain), "--decrypt", str(probe))
        words = {w[0] for w in status(dec.stdout) if w}
        if dec.returncode == 0 and "GOODMDC" in words and plain.read_bytes() == PROBE_TEXT:
            return None
    finally:
        probe.unlink(missing_ok=True)
        plain.unlink(missing_ok=True)
    if key.passphrase is None:
        return _locked(key, f"The PGP key in {key.spec.file} is passphrase-protected and no passphrase is set.",
                       passphrase_remedy(key.spec.passphrase))
    return _locked(key, f"{_describe(key.spec.passphrase)} does not unlock the PGP key in {key.spec.file} "
                        f"(subkey {keyid}).", passphrase_remedy(key.spec.passphrase))
