"""Strict OpenPGP decryption with the real gpg binary, in throwaway GnuPG homes.

A file is accepted only when gpg reports ``DECRYPTION_OKAY`` and ``GOODMDC``, the
session key came from one of our keys, no error appears in the status output, the
plaintext stays within its bound and gpg finishes within its time-out. gpg 2.2 writes
plaintext even when the integrity check fails, so the output is deleted on every
failure. Signatures are recorded, and required only with ``[pgp] signer_keys``
(signatures.py). Speed: inside a throwaway home the agent re-protects the imported
key with the minimum S2K count (the key file at rest keeps its own protection), so a
small file costs ~10 ms; several homes use several cores.
"""

from __future__ import annotations

import errno
import os
import queue
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..configmodel import DEFAULT_MAX_EXPANSION, DEFAULT_MAX_OUTPUT, OUTPUT_FLOOR
from ..errors import ConfigError, DecryptionError, DiskFullError
from ..files import disk_full
from . import signatures
from .gpgrun import decrypt_bounded, disable_core_dumps, status
from .homes import claim_home, release_homes
from .info import is_openpgp, signer_fingerprints
from .keyring import KeyProblem, KeySpec, init_home, inspect, prepare_home

GPG_ERR_BAD_PASSPHRASE = 11  # libgpg-error code (the low 16 bits of a status error value)
REDELIVER = "The encrypted original is kept; download it again or ask IBKR to redeliver it."
FAILURE_WORDS = {"BADMDC", "DECRYPTION_FAILED", "ERROR", "FAILURE", "NODATA"}


@dataclass(frozen=True)
class Decrypted:
    """A decryption that was accepted."""

    key: str  # primary fingerprint of the key that decrypted it
    signature: str  # "unsigned" or "<key ID> verified|unverified" (signatures.describe)


@dataclass(frozen=True)
class Limits:
    """How much plaintext a message may produce: ``max_expansion`` bytes per encrypted byte,
    at least OUTPUT_FLOOR (tiny files), never more than ``max_output``."""

    max_expansion: float = DEFAULT_MAX_EXPANSION
    max_output: int = DEFAULT_MAX_OUTPUT
    timeout_base: float = 60.0  # seconds for any file, plus one per timeout_rate bytes of it
    timeout_rate: int = 256 << 10

    def bound(self, size: int) -> int:
        return min(self.max_output, max(OUTPUT_FLOOR, int(size * self.max_expansion)))

    def timeout(self, size: int) -> float:
        return self.timeout_base + size / self.timeout_rate


class Decryptor:
    """Holds secret keys in ``homes`` throwaway GnuPG homes and decrypts strictly. Thread-safe.

    ``key_files``: paths (unlocked with ``passphrase``) or KeySpecs (each with its own).
    Keys that cannot be used are listed in ``problems`` and fail only the files encrypted
    to them; with ``strict`` (doctor, direct use) the first problem is raised instead.
    """

    def __init__(self, key_files: list[Path | KeySpec], passphrase: str | None = None, homes: int = 2,
                 signer_keys: list[Path] | tuple = (), limits: Limits = Limits(), strict: bool = True) -> None:
        disable_core_dumps()  # passphrases and agents holding unlocked keys from here on
        specs = [f if isinstance(f, KeySpec) else KeySpec(Path(f), passphrase) for f in key_files]
        if not specs:
            raise ConfigError("No PGP secret key file is configured.", "Set [pgp] secret_key_file.")
        for spec in specs:
            if not Path(spec.file).is_file():
                raise ConfigError(
                    f"PGP secret key file {spec.file} does not exist.",
                    "Fix [pgp] secret_key_file, restore it (ibreports keys restore) or run ibreports keygen.",
                )
        self.limits = limits
        claimed = [claim_home() for _ in range(max(1, homes))]
        self._paths = [home for home, _ in claimed]
        self._finalizer = weakref.finalize(self, release_homes, claimed)
        self._pool: queue.Queue[Path] = queue.Queue()
        try:
            for home in self._paths:
                init_home(home)
            self._signers = signer_fingerprints(self._paths[0], [Path(p) for p in signer_keys])
            keys, problems = [], []
            for spec in specs:
                found, trouble = inspect(self._paths[0], spec)
                keys += found
                problems += trouble
            with ThreadPoolExecutor(len(self._paths)) as ex:
                found_problems = list(ex.map(lambda h: prepare_home(h, keys, list(signer_keys)), self._paths))
            by_fpr = {fpr: p for result in found_problems for fpr, p in result.items()}
            problems += list(by_fpr.values())
            usable = [k for k in keys if k.fingerprint not in by_fpr]
            if problems and strict:
                raise problems[0].error
        except BaseException:
            self.close()
            raise
        self.problems: list[KeyProblem] = problems
        self._fingerprints = sorted({k.fingerprint for k in usable})
        self._key_ids = sorted({i for k in usable for i in k.key_ids})
        for home in self._paths:
            self._pool.put(home)

    @property
    def fingerprints(self) -> list[str]:
        """Primary fingerprints of the usable keys."""
        return list(self._fingerprints)

    @property
    def key_ids(self) -> list[str]:
        """Long key IDs of the usable keys (primaries and subkeys)."""
        return list(self._key_ids)

    @property
    def signers(self) -> list[str]:
        """Primary fingerprints a delivery must be signed by (empty: signatures are only recorded)."""
        return sorted(self._signers)

    # -- decryption -------------------------------------------------------------------------

    def decrypt(self, src: Path, dest: Path) -> Decrypted:
        """Decrypt ``src`` into ``dest`` (0600).

        Raises DecryptionError (with a ``reason`` attribute) and leaves no ``dest`` on failure.
        """
        src, dest = Path(src), Path(dest)
        if not self._finalizer.alive:
            raise DecryptionError("The decryptor was closed.", "Open a new Decryptor.")
        size = os.path.getsize(src)
        if size == 0:
            raise _refuse("empty", "the file is empty")
        if not is_openpgp(src):
            raise _refuse("malformed", "truncated or not an OpenPGP message")
        dest.unlink(missing_ok=True)
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # gpg writes into this inode
        home = self._pool.get()
        try:
            limit = self.limits.bound(size)
            timeout = self.limits.timeout(size)
            rc, out, err, stopped = decrypt_bounded(home, src, dest, limit, timeout)
            if stopped == "oversized":
                raise _refuse("oversized", f"its plaintext exceeds {limit} bytes ({_mib(limit)}; the bound for a "
                              f"{size}-byte message), a decompression bomb or a limit set too low",
                              "The encrypted original is kept; if the file is genuine, raise [pgp] max_expansion "
                              "or [pgp] max_output.")
            if stopped == "timeout":
                raise _refuse("timeout", f"gpg did not finish within {timeout:.0f} s", REDELIVER)
            if rc != 0 and (full := _output_full(err, status(out), src, dest)) is not None:
                raise full  # never taken for a damaged file: gpg checks integrity only at the end
            return self._accept(rc, status(out), err, dest)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        finally:
            self._pool.put(home)

    def _accept(self, rc: int, status: list[list[str]], err: str, dest: Path) -> Decrypted:
        words = {w[0] for w in status if w}
        used = next((w[2] for w in status if w[0] == "DECRYPTION_KEY" and len(w) > 2), None)
        found = signatures.signatures(status)
        length = next((w[1] for w in status if w[0] == "PLAINTEXT_LENGTH" and len(w) > 1), None)
        complete = length is None or (length.isdigit() and int(length) == dest.stat().st_size)
        # gpg exits 1 or 2 for a signature it could not verify; nothing else may have gone wrong.
        clean = rc == 0 or (rc in (1, 2) and found and "error writing" not in err and "failed:" not in err)
        if (clean and complete and {"GOODMDC", "DECRYPTION_OKAY"} <= words and used in self._fingerprints
                and not words & FAILURE_WORDS):
            why = signatures.refusal(found, self._signers)
            if why is not None:
                raise _refuse("signature", why, "The encrypted original is kept; check where the file came from "
                              "and which key signed it ([pgp] signer_keys).")
            return Decrypted(used, signatures.describe(found))
        return self._refusal(status, words, used)

    def _refusal(self, status: list[list[str]], words: set[str], used: str | None) -> Decrypted:
        needed = [w[1] for w in status if w[0] == "ENC_TO" and len(w) > 1]
        info = next((w for w in status if w[0] == "DECRYPTION_INFO"), None)
        pk_errors = [w[2] for w in status if w[:2] == ["ERROR", "pkdecrypt_failed"] and len(w) > 2]
        if used is None and needed and not set(needed) & set(self._key_ids):
            broken = next((p for p in self.problems if set(needed) & p.key_ids), None)
            if broken is not None:  # encrypted to a key we could not load: its own cause and remedy
                raise _refuse(broken.reason, f"it is encrypted to key {', '.join(needed)}, which cannot be used: "
                              f"{broken.error.message.rstrip('.')}", broken.error.remedy)
        if pk_errors and set(needed) & set(self._key_ids):
            if any(code.isdigit() and int(code) & 0xFFFF == GPG_ERR_BAD_PASSPHRASE for code in pk_errors):
                raise _refuse("locked", "our key could not be unlocked", REDELIVER)
            # The start-up probe proved the passphrase: a session key that does not decrypt
            # with our key was damaged in the file, not locked away from us.
            raise _refuse("integrity", "integrity check failed: the encrypted session key does not decrypt with "
                          "our key (the file is corrupted or tampered)")
        if used is None and (needed or "NEED_PASSPHRASE_SYM" in words):
            held = ", ".join(self.key_ids) or "none"
            if not needed:
                raise _refuse("no-key", f"not encrypted to any key we hold (passphrase-only message; we hold {held})")
            raise _refuse(
                "no-key", f"not encrypted to any key we hold (it needs {', '.join(needed)}; we hold {held})",
                "Add the matching secret key to [pgp] secret_key_file, or upload ibkr_pgp_public.asc "
                "in IBKR Client Portal and ask IBKR to redeliver the file.",
            )
        if info is not None and len(info) > 1 and info[1] == "0" and (len(info) < 4 or info[3] == "0"):
            raise _refuse("no-mdc", "no integrity protection (MDC) - refused")
        if "BADMDC" in words:
            raise _refuse("integrity", "integrity check failed (tampered or corrupted)")
        if "NODATA" in words:
            raise _refuse("malformed", "truncated or not an OpenPGP message")
        if "BEGIN_DECRYPTION" in words:
            raise _refuse("integrity", "integrity check failed (tampered or corrupted)")
        raise _refuse("failed", "gpg could not decrypt it")

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


_FULL = {os.strerror(code): code for code in (errno.ENOSPC, errno.EDQUOT)}  # gpg runs with LC_ALL=C


def _output_full(err: str, status: list[list[str]], src: Path, dest: Path) -> DiskFullError | None:
    """A DiskFullError when gpg could not write the plaintext for want of space (it says so on stderr)."""
    code = next((c for text, c in _FULL.items() if text in err), None)
    if code is None:
        return None
    length = next((w[1] for w in status if w[0] == "PLAINTEXT_LENGTH" and len(w) > 1 and w[1].isdigit()), None)
    try:
        written = dest.stat().st_size
    except OSError:
        written = 0
    needed = int(length) if length is not None else max(written, os.path.getsize(src))
    return disk_full(dest.parent, what="gpg's output folder", subject="the decrypted file", needed=needed,
                     at_least=length is None, code=code,
                     move="set [run] staging_dir to a folder on a larger disk",
                     kept="the encrypted file is kept (on the server, and in the archive with keep_encrypted), "
                          "the partial plaintext was deleted, and the next run decrypts it again.")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def _refuse(reason: str, what: str, remedy: str = REDELIVER) -> DecryptionError:
    return DecryptionError(f"Decryption refused ({reason}): {what}.", remedy, reason=reason)
