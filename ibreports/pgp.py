"""Strict OpenPGP decryption with the real gpg binary, in throwaway GnuPG homes.

A file is accepted only when python-gnupg says ``ok``, gpg exits 0, the status
output holds ``GOODMDC`` and the session key came from one of our keys. gpg 2.2
writes plaintext even when the integrity check fails, so the output is deleted on
every failure. Speed: inside a throwaway home the agent re-protects the imported
key with the minimum S2K count (the key file at rest keeps its own protection), so
a small file costs ~10 ms instead of ~250 ms; several homes use several cores.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import subprocess
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gnupg

from .errors import ConfigError, DecryptionError
from .files import claim_workdir, release_workdir, sweep_abandoned

# python-gnupg warns about every non-zero gpg exit; each refusal is reported here, once, clearly.
logging.getLogger("gnupg").setLevel(logging.ERROR)

ARMOR_HEADER = b"-----BEGIN PGP MESSAGE-----"
# PKESK, SKESK, compressed, marker, literal, SEIPD, AEAD: packets a message may start with.
MESSAGE_TAGS = {1, 3, 8, 10, 11, 18, 20}
GPG_OPTIONS = [
    "--no-auto-key-locate", "--no-auto-key-retrieve", "--no-auto-check-trustdb",
    "--trust-model", "always", "--no-symkey-cache", "--no-greeting", "--pinentry-mode", "loopback",
]
# Minimum S2K count: the agent re-protects imported keys cheaply (the home dies with the run).
AGENT_CONF = "s2k-count 65536\ndisable-scdaemon\n"
PASSPHRASE_REMEDY = "Set IBREPORTS_KEY_PASSPHRASE (or [pgp] passphrase) to the passphrase of that key."
GPG_ERR_BAD_PASSPHRASE = 11  # libgpg-error code (the low 16 bits of a status error value)
REDELIVER = "The encrypted original is kept; download it again or ask IBKR to redeliver it."


def is_openpgp(path: Path) -> bool:
    """True if the file starts like an OpenPGP message (ASCII armor or a binary packet header)."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    stripped = head.lstrip()
    if stripped.startswith(ARMOR_HEADER):
        return True
    if not head or not head[0] & 0x80:
        return False
    first = head[0]
    tag = first & 0x3F if first & 0x40 else (first >> 2) & 0x0F  # new vs old packet format
    return tag in MESSAGE_TAGS


HOME_PREFIX = "ibr-gpg-"


def _home_base() -> str | None:
    # gpg-agent's socket lives in the home: keep the path short (sun_path is ~108 bytes).
    return None if len(tempfile.gettempdir()) < 60 else "/tmp"


def _mkhome() -> tuple[Path, int]:
    """A 0700 home, locked while in use so a later run can tell a killed run's home from a live one."""
    return claim_workdir(HOME_PREFIX, Path(_home_base()) if _home_base() else None)


def _kill_agent(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                   capture_output=True, timeout=30, check=False)


def _kill_and_remove(homes: list[tuple[Path, int]]) -> None:
    for home, lock in homes:
        _kill_agent(home)
        release_workdir(home, lock)


def sweep_abandoned_homes() -> int:
    """Stop the agents of, and delete, homes (with imported keys) left by killed runs."""
    return sweep_abandoned(HOME_PREFIX, Path(_home_base()) if _home_base() else None, _kill_agent)


def _status(stderr: str) -> list[list[str]]:
    """The [GNUPG:] status lines of a gpg run, split into words."""
    return [line.split()[1:] for line in stderr.splitlines() if line.startswith("[GNUPG:] ")]


def _run_gpg(args: list[str], path: Path) -> str:
    """Run gpg on ``path`` in a throwaway home with no agent; return its status output."""
    home, lock = _mkhome()
    try:
        proc = subprocess.run(
            ["gpg", "--batch", "--no-tty", "--no-options", "--no-autostart", "--homedir", str(home),
             "--status-fd", "1", "--with-colons", *args, str(path)],
            capture_output=True, text=True, timeout=60, check=False,
        )
        return proc.stdout
    finally:
        _kill_and_remove([(home, lock)])


def recipients(path: Path) -> list[str]:
    """Long key IDs a message is encrypted to (0000000000000000 for a hidden recipient)."""
    out = _run_gpg(["--list-only", "--decrypt"], path)
    return [w[1] for w in _status(out) if w[:1] == ["ENC_TO"] and len(w) > 1]


def armor_fingerprints(path: Path) -> list[str]:
    """Primary fingerprints of the keys in a key file (armored or binary, public or secret)."""
    if not Path(path).is_file():
        raise ConfigError(f"Key file {path} does not exist.", "Fix the path or run ibreports keygen.")
    lines = _run_gpg(["--show-keys"], path).splitlines()
    return [
        lines[i + 1].split(":")[9]
        for i, line in enumerate(lines[:-1])
        if line.startswith(("pub:", "sec:")) and lines[i + 1].startswith("fpr:")
    ]


class Decryptor:
    """Holds secret keys in ``homes`` throwaway GnuPG homes and decrypts strictly. Thread-safe."""

    def __init__(self, key_files: list[Path], passphrase: str | None, homes: int = 2) -> None:
        if passphrase is not None and any(c in passphrase for c in "\r\n\0"):
            raise ConfigError("The PGP passphrase contains a line break or NUL.", PASSPHRASE_REMEDY)
        if not key_files:
            raise ConfigError("No PGP secret key file is configured.", "Set [pgp] secret_key_file.")
        for f in key_files:
            if not Path(f).is_file():
                raise ConfigError(
                    f"PGP secret key file {f} does not exist.",
                    "Fix [pgp] secret_key_file, restore it (ibreports keys restore) or run ibreports keygen.",
                )
        self._passphrase = passphrase
        claimed = [_mkhome() for _ in range(max(1, homes))]
        self._paths = [home for home, _ in claimed]
        self._finalizer = weakref.finalize(self, _kill_and_remove, claimed)
        self._pool: queue.Queue[gnupg.GPG] = queue.Queue()
        self._fingerprints: list[str] = []
        self._key_ids: list[str] = []
        try:
            with ThreadPoolExecutor(len(self._paths)) as ex:
                prepared = list(ex.map(lambda h: self._prepare(h, [Path(f) for f in key_files]), self._paths))
        except BaseException:
            self.close()
            raise
        for g, self._fingerprints, self._key_ids in prepared:
            self._pool.put(g)

    @property
    def fingerprints(self) -> list[str]:
        """Primary fingerprints of the keys held."""
        return list(self._fingerprints)

    @property
    def key_ids(self) -> list[str]:
        """Long key IDs of the primaries and their secret encryption subkeys."""
        return list(self._key_ids)

    # -- set-up -----------------------------------------------------------------------------

    def _prepare(self, home: Path, key_files: list[Path]) -> tuple[gnupg.GPG, list[str], list[str]]:
        """Import every key file into ``home`` and prove the passphrase unlocks each one."""
        (home / "gpg-agent.conf").write_text(AGENT_CONF)  # before the agent starts
        g = gnupg.GPG(gnupghome=str(home), options=GPG_OPTIONS)
        origin: dict[str, Path] = {}
        for f in key_files:
            res = g.import_keys_file(str(f))
            if not res.sec_imported and not any("private key" in r.get("text", "") for r in res.results):
                raise ConfigError(
                    f"{f} holds no PGP secret key" + (" (it is a public key)." if res.count else "."),
                    "Point [pgp] secret_key_file at the armored secret key (ibkr_pgp_secret.asc).",
                )
            origin.update({fp: f for fp in res.fingerprints if fp})
        fprs, ids = [], []
        for key in g.list_keys(secret=True):
            fprs.append(key["fingerprint"])
            ids.append(key["keyid"])
            key_file = origin.get(key["fingerprint"], key_files[0])
            subs = [
                sub for sub in key.get("subkey_info", {}).values()
                if "e" in sub.get("cap", "") and sub.get("token", "+") == "+"  # '#' = secret part missing
            ]
            if not subs:
                raise ConfigError(
                    f"The PGP key in {key_file} has no secret encryption subkey, so it cannot decrypt.",
                    "Export the complete secret key (gpg --armor --export-secret-keys) or run ibreports keygen.",
                )
            for sub in subs:
                ids.append(sub["keyid"])
                self._probe(g, home, key_file, sub)
        return g, sorted(set(fprs)), sorted(set(ids))

    def _probe(self, g: gnupg.GPG, home: Path, key_file: Path, sub: dict) -> None:
        """Decrypt a tiny message to subkey ``sub``: a wrong passphrase fails here, once."""
        probe, plain = home / "probe.pgp", home / "probe.out"
        enc = g.encrypt(b"ibreports passphrase check", f"{sub['fingerprint']}!", output=str(probe))
        if not enc.ok:  # an expired subkey cannot be encrypted to; decryption still works later
            return
        try:
            res = g.decrypt_file(str(probe), passphrase=self._passphrase, output=str(plain))
            words = [w[0] for w in _status(res.stderr) if w]
            if not (res.ok and res.returncode == 0 and "GOODMDC" in words):
                if self._passphrase is None and "NEED_PASSPHRASE" in words:
                    raise ConfigError(
                        f"The PGP key in {key_file} is passphrase-protected and no passphrase is set.",
                        PASSPHRASE_REMEDY,
                    )
                raise ConfigError(
                    f"The PGP passphrase does not unlock the key in {key_file} (subkey {sub['keyid']}).",
                    PASSPHRASE_REMEDY,
                )
        finally:
            probe.unlink(missing_ok=True)
            plain.unlink(missing_ok=True)

    # -- decryption -------------------------------------------------------------------------

    def decrypt(self, src: Path, dest: Path) -> str:
        """Decrypt ``src`` into ``dest`` (0600); return the primary fingerprint of the key used.

        Raises DecryptionError (with its ``reason``) and leaves no ``dest`` on failure.
        """
        src, dest = Path(src), Path(dest)
        if not self._finalizer.alive:
            raise DecryptionError("The decryptor was closed.", "Open a new Decryptor.")
        if os.path.getsize(src) == 0:
            raise _refuse("empty", "the file is empty")
        if not is_openpgp(src):
            raise _refuse("malformed", "truncated or not an OpenPGP message")
        dest.unlink(missing_ok=True)
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # gpg writes into this inode
        g = self._pool.get()
        try:
            # gpg reads the file itself: python-gnupg would pump it through a pipe from a Python
            # thread 16 KiB at a time, a CPU cost that competes with the downloads on big files.
            res = g.decrypt_file(io.BytesIO(), passphrase=self._passphrase, output=str(dest),
                                 extra_args=["--", str(src)])
            return self._accept(res)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        finally:
            self._pool.put(g)

    def _accept(self, res: gnupg.Crypt) -> str:
        status = _status(res.stderr)
        words = {w[0] for w in status if w}
        used = next((w[2] for w in status if w[0] == "DECRYPTION_KEY" and len(w) > 2), None)
        if (res.ok and res.returncode == 0 and "GOODMDC" in words and used in self._fingerprints
                and not words & {"BADMDC", "DECRYPTION_FAILED", "ERROR", "FAILURE", "NODATA"}):
            return used
        needed = [w[1] for w in status if w[0] == "ENC_TO" and len(w) > 1]
        info = next((w for w in status if w[0] == "DECRYPTION_INFO"), None)
        pk_errors = [w[2] for w in status if w[:2] == ["ERROR", "pkdecrypt_failed"] and len(w) > 2]
        if pk_errors and set(needed) & set(self._key_ids):
            if any(code.isdigit() and int(code) & 0xFFFF == GPG_ERR_BAD_PASSPHRASE for code in pk_errors):
                return _raise("locked", "our key could not be unlocked", PASSPHRASE_REMEDY)
            # The start-up probe proved the passphrase: a session key that does not decrypt
            # with our key was damaged in the file, not locked away from us.
            return _raise(
                "integrity", "integrity check failed: the encrypted session key does not decrypt with our key "
                "(the file is corrupted or tampered)",
            )
        if used is None and (needed or "NEED_PASSPHRASE_SYM" in words):
            held = ", ".join(self.key_ids) or "none"
            if not needed:
                return _raise("no-key", f"not encrypted to any key we hold (passphrase-only message; we hold {held})")
            return _raise(
                "no-key", f"not encrypted to any key we hold (it needs {', '.join(needed)}; we hold {held})",
                "Add the matching secret key to [pgp] secret_key_file, or upload ibkr_pgp_public.asc "
                "in IBKR Client Portal and ask IBKR to redeliver the file.",
            )
        if info is not None and len(info) > 1 and info[1] == "0" and (len(info) < 4 or info[3] == "0"):
            return _raise("no-mdc", "no integrity protection (MDC) - refused")
        if "BADMDC" in words:
            return _raise("integrity", "integrity check failed (tampered or corrupted)")
        signers = [w[1] for w in status if w[0] == "ERRSIG" and len(w) > 1]
        if signers and "GOODMDC" in words:
            # Intact, but gpg exits 2 for a signature it cannot verify; the strict rule refuses it.
            return _raise(
                "signature",
                f"signed by a key we cannot verify (key ID {', '.join(signers)}); strict decryption refuses it",
                "The encrypted original is kept; IBKR does not sign deliveries, so check where the file came from.",
            )
        if "NODATA" in words:
            return _raise("malformed", "truncated or not an OpenPGP message")
        if "BEGIN_DECRYPTION" in words:
            return _raise("integrity", "integrity check failed (tampered or corrupted)")
        return _raise("failed", "gpg could not decrypt it")

    # -- life cycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every home's gpg-agent and delete the homes (idempotent)."""
        self._finalizer()

    def __enter__(self) -> "Decryptor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def homes(self) -> list[Path]:
        """The throwaway GnuPG homes (for diagnostics and tests)."""
        return list(self._paths)


def _refuse(reason: str, what: str, remedy: str = REDELIVER) -> DecryptionError:
    return DecryptionError(f"Decryption refused: {what}.", remedy, reason=reason)


def _raise(reason: str, what: str, remedy: str = REDELIVER) -> str:
    raise _refuse(reason, what, remedy)
