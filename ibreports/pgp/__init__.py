"""OpenPGP with the real gpg binary: strict decryption (decrypt.py), keys loaded one by one
(keyring.py), signatures recorded or required (signatures.py), throwaway homes that never
outlive the process (homes.py), gpg run with a minimal environment (gpgrun.py)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from ..configmodel import PgpConfig
from .decrypt import Decrypted, Decryptor, Limits
from .info import armor_fingerprints, is_openpgp, recipients
from .gpgrun import disable_core_dumps, minimal_env
from .homes import HOME_PREFIX, TEMP_PREFIXES, claim_home, release_home, sweep_abandoned_homes
from .keyring import PASSPHRASE_REMEDY, KeyProblem, KeySpec, passphrase_remedy

__all__ = [
    "HOME_PREFIX", "PASSPHRASE_REMEDY", "TEMP_PREFIXES", "Decrypted", "Decryptor", "KeyProblem", "KeySpec",
    "Limits", "armor_fingerprints", "claim_home", "decryptor_for", "disable_core_dumps", "is_openpgp",
    "key_specs", "listed_again", "minimal_env", "passphrase_remedy", "recipients", "release_home", "sweep_abandoned_homes",
]


def key_specs(pgp: PgpConfig) -> list[KeySpec]:
    """Each configured secret key file once, with the passphrase that applies to it.

    A file listed again is loaded once, with its first entry's passphrase (see :func:`listed_again`):
    fetch and doctor both load the keys through here, so both load, and report, the same keys.
    """
    specs: dict[Path, KeySpec] = {}
    for i, path in enumerate(pgp.secret_key_files):
        specs.setdefault(Path(path).absolute(), KeySpec(path, pgp.passphrase_for(i)))
    return list(specs.values())


def listed_again(pgp: PgpConfig) -> list[str]:
    """One sentence per secret key file listed more than once (fetch logs them, doctor shows them)."""
    counts = Counter(Path(p).absolute() for p in pgp.secret_key_files)
    return [f"[pgp] secret_key_file lists {path} {n} times: it is loaded once, with the passphrase of its "
            "first entry; remove the other entries." for path, n in counts.items() if n > 1]


def decryptor_for(pgp: PgpConfig, homes: int | None = None) -> Decryptor:
    """A Decryptor for ``[pgp]``: its keys, signer policy and output bounds. A key that cannot be
    used does not stop it: it is in ``problems`` and fails only the files encrypted to it."""
    return Decryptor(
        key_specs(pgp), homes=homes or min(2, os.cpu_count() or 1), signer_keys=pgp.signer_keys,
        limits=Limits(pgp.max_expansion, pgp.max_output), strict=False,
    )
