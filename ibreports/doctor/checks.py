"""PGP and archive diagnosis: keys unlock, samples are encrypted to a key we hold, the archive round-trips."""

from __future__ import annotations

import secrets
from contextlib import ExitStack
from pathlib import Path

from ..archive import Archive, open_archive
from ..config import ArchiveConfig, Config, PgpConfig
from ..errors import ArchiveError, ConfigError, DecryptionError
from ..pgp import Decryptor, KeySpec, Limits, armor_fingerprints, key_specs, listed_again, recipients
from .steps import Checklist, Sample


def check_pgp(config: Config, cl: Checklist, stack: ExitStack, samples: list[Sample], staging: Path) -> None:
    """Each secret key file loads on its own with its passphrase; the signature policy and each
    signer key file; each sample is encrypted to a key we hold and decrypts."""
    pgp = config.pgp
    files = pgp.secret_key_files
    if not files:
        if samples:
            cl.step("keys", _no_keys, samples)
        else:
            cl.skip("keys", "no [pgp] secret_key_file configured (needed only for encrypted statements)")
        return
    cl.step("signatures", _policy, pgp, blocking=False)
    signers_ok = all([cl.step(f"signer {Path(path).name}", _signer, path, blocking=False) for path in pgp.signer_keys])
    signers = pgp.signer_keys if signers_ok else []  # a broken signer file is its own failure, not the keys'
    held: list[Decryptor] = []
    for note in listed_again(pgp):  # the very sentence fetch logs
        cl.step("key listed twice", lambda text: (None, text), note, blocking=False)
    for spec in key_specs(pgp):  # the keys fetch loads: each file once
        decryptor = cl.step(f"key {Path(spec.file).name}", _load, pgp, spec, signers, blocking=False)
        if decryptor is not None:
            stack.callback(decryptor.close)
            held.append(decryptor)
    for sample in samples:
        if held:
            cl.step(f"sample {sample.source}", _check_sample, sample, held, staging, blocking=False)
        else:
            cl.skip(f"sample {sample.source}", "no PGP key loaded")


def _no_keys(samples: list[Sample]):
    raise ConfigError(
        f"No PGP secret key file is configured, but {samples[0].source} delivers encrypted files.",
        "Set [pgp] secret_key_file (ibreports keygen writes keys/ibkr_pgp_secret.asc).",
    )


def _policy(pgp: PgpConfig):
    bound = f"plaintext at most {pgp.max_expansion:g}x the encrypted size (at least 64 MiB), never over {pgp.max_output} bytes"
    if not pgp.signer_keys:
        return None, f"signatures recorded, not required ([pgp] signer_keys is empty); {bound}"
    return None, f"a good signature by one of {len(pgp.signer_keys)} signer key file(s) is required; {bound}"


def _signer(path: Path):
    if not Path(path).is_file():
        raise ConfigError(f"The signer key file {path} ([pgp] signer_keys) does not exist.",
                          "Fix the path, or remove it from [pgp] signer_keys.")
    fprs = armor_fingerprints(path)
    if not fprs:
        raise ConfigError(f"The signer key file {path} ([pgp] signer_keys) holds no PGP key.",
                          "Point it at the signer's armored public key (gpg --armor --export KEYID).")
    return True, f"signer {', '.join(fprs)}"


def _load(pgp: PgpConfig, spec: KeySpec, signers: list[Path]):
    # Each key on its own, so one key's problem never hides another's verdict.
    decryptor = Decryptor([spec], homes=1, signer_keys=signers, limits=Limits(pgp.max_expansion, pgp.max_output))
    return decryptor, f"unlocks; key IDs {', '.join(decryptor.key_ids)}"


def _check_sample(sample: Sample, held: list[Decryptor], staging: Path):
    needed = recipients(sample.path)
    ours = sorted({i for d in held for i in d.key_ids})
    match = next((d for d in held if set(needed) & set(d.key_ids)), None)
    if not needed:
        raise DecryptionError(
            f"The sample {sample.name} from {sample.source} is not encrypted to any public key "
            "(not an OpenPGP message, or passphrase-only).",
            "Check the delivery settings in Client Portal: statements must be encrypted to ibkr_pgp_public.asc.",
        )
    if match is None:
        raise DecryptionError(
            f"Statements from {sample.source} are encrypted to key {', '.join(needed)}; you hold {', '.join(ours)} "
            f"(sample {sample.name}).",
            "Upload ibkr_pgp_public.asc in Client Portal, or add the old key to [pgp] secret_key_file.",
        )
    plain = staging / f"{sample.source}.plain"
    try:
        used = match.decrypt(sample.path, plain)
    finally:
        plain.unlink(missing_ok=True)  # only the verdict matters here
    return None, (f"{sample.name}: encrypted to {', '.join(needed)}, decrypts with {used.key[-16:]}; "
                  f"signature: {used.signature}")


def check_archive(config: ArchiveConfig, cl: Checklist, staging: Path) -> None:
    """Object Lock (when configured), then write, read back and delete a probe object ``doctor/probe-<random>``.

    On a bucket with Object Lock the probe cannot be relied on to be deletable: it is written
    without ibreports' retention to the one key ``doctor/probe`` and left there.
    """
    archive = cl.step("open", _open, config)
    locked = False
    if archive is not None and config.object_lock is not None:  # only archives declaring the feature open
        state = cl.step("object lock", _lock, archive)
        locked = state is not None and state.enabled
    key = "doctor/probe" if locked else f"doctor/probe-{secrets.token_hex(8)}"
    data = f"ibreports doctor probe {key}\n".encode()
    cl.step("write", _write, archive, key, data)
    cl.step("read", _read, archive, key, data, staging, blocking=False)
    if locked:
        cl.skip("delete", "not needed: the bucket is write-once (Object Lock); doctor reuses the key doctor/probe")
    else:
        cl.step("delete", _delete, archive, key)


def _lock(archive):
    from ..archive.objectlock import check_lock

    return check_lock(archive)


def _open(config: ArchiveConfig) -> tuple[Archive, str]:
    archive = open_archive(config, quick=True)
    return archive, archive.description


def _write(archive: Archive, key: str, data: bytes):
    archive.put_bytes(key, data, {"purpose": "ibreports doctor probe"}, retain=False)
    return None, key


def _read(archive: Archive, key: str, data: bytes, staging: Path):
    dest = staging / "probe"
    try:
        archive.get(key, dest)
        if dest.read_bytes() != data:
            raise ArchiveError(f"The probe {key} read back differs from what was written.", "Check the archive store.")
    finally:
        dest.unlink(missing_ok=True)
    return None, f"{len(data)} bytes, identical"


def _delete(archive: Archive, key: str):
    archive.delete(key)
    return None, "probe removed"
