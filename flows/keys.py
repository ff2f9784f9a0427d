"""Flows ``generate-keys`` and ``backup-keys``: the key commands, as Prefect runs.

Passphrases come from a Prefect Secret block named by a parameter, else from the
environment; they are never parameters themselves (parameters are stored and
shown in the UI) and never logged, returned or put into an artifact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from ibreports.config import ArchiveConfig, config_path, load_config
from ibreports.errors import ConfigError, KeyMaterialError
from ibreports.files import claim_workdir, release_workdir
from ibreports.pgp import disable_core_dumps, sweep_abandoned_homes
from ibreports.keys import backup_keys as backup_key_folder
from ibreports.keys import generate_keys as generate_key_pairs
from ibreports.keys import restore_keys

KEY_PASSPHRASE_ENV = "IBREPORTS_KEY_PASSPHRASE"
BACKUP_PASSPHRASE_ENV = "IBREPORTS_BACKUP_PASSPHRASE"
BACKUP_URL_ENV = "IBREPORTS_KEY_BACKUP_URL"


def _passphrase(block: str | None, envs: tuple[str, ...], what: str) -> str:
    """The passphrase from the named Secret block, else the first environment variable set."""
    if block:
        from prefect.blocks.system import Secret

        try:
            return str(Secret.load(block).get())
        except Exception as exc:  # noqa: BLE001 - any failure means the block is unusable
            raise ConfigError(
                f"The Prefect Secret block '{block}' for the {what} could not be loaded ({type(exc).__name__}).",
                f"Create it (Secret(value=...).save('{block}')) or pass another block name.",
            ) from None
    for name in envs:
        if os.environ.get(name):
            return os.environ[name]
    raise ConfigError(
        f"No {what} was given.",
        f"Pass passphrase_block=<Secret block name> or set {' or '.join(envs)} in the worker's environment.",
    )


def _clean_start() -> None:
    """No core dumps while passphrases are in memory; a killed run's GnuPG homes and scratch key folders go."""
    disable_core_dumps()
    sweep_abandoned_homes()


def _archive_settings(config: str | None) -> ArchiveConfig | None:
    """S3 settings (endpoint, region, SSE) from the config file when there is one."""
    path = config_path(config)
    return load_config(path).archive if config or path.exists() else None


@flow(name="generate-keys", persist_result=False)
def generate_keys(
    dir: str = "keys",
    name: str = "ibreports",
    email: str | None = None,
    rsa_bits: int = 4096,
    pgp_bits: int = 4096,
    pgp_expire: str = "0",
    force: bool = False,
    passphrase_block: str | None = None,
) -> dict[str, Any]:
    """Generate the sFTP and PGP key pairs; returns fingerprints and public key paths only."""
    logger = get_run_logger()
    _clean_start()
    folder = Path(dir).absolute()
    passphrase = _passphrase(passphrase_block, (KEY_PASSPHRASE_ENV,), "key passphrase")
    report = generate_key_pairs(
        folder, passphrase, name=name, email=email, rsa_bits=rsa_bits, pgp_bits=pgp_bits,
        pgp_expire=pgp_expire, force=force,
    )
    logger.info("sFTP key %s, PGP key %s written to %s", report.ssh_fingerprint, report.pgp_fingerprint, folder)
    create_markdown_artifact(
        key="ibreports-keys",
        markdown=(
            f"# New keys in `{folder}`\n\n"
            f"- sFTP (RSA {report.rsa_bits}): `{report.ssh_fingerprint}`\n"
            f"- PGP (RSA {report.pgp_bits}, {report.pgp_uid}): `{report.pgp_fingerprint}`\n\n"
            "Next: e-mail `ibkr_sftp_rsa.pub` to IBKR's Reporting Integration team "
            "(reportingintegration@interactivebrokers.com) with your username, upload "
            "`ibkr_pgp_public.asc` in Client Portal, and back the keys up (deployment backup-keys).\n"
        ),
    )
    return {
        "dir": str(folder),
        "ssh_fingerprint": report.ssh_fingerprint,
        "pgp_fingerprint": report.pgp_fingerprint,
        "retired": str(report.retired) if report.retired else None,
    }


@flow(name="backup-keys", persist_result=False)
def backup_keys(
    dir: str = "keys",
    to: str | None = None,
    passphrase_block: str | None = None,
    config: str | None = None,
) -> dict[str, Any]:
    """Back the key folder up to ``to`` (path or s3://), then prove it restores.

    ``to`` defaults to $IBREPORTS_KEY_BACKUP_URL. The backup passphrase comes from
    ``passphrase_block``, else $IBREPORTS_BACKUP_PASSPHRASE (as for ``ibreports keys
    backup``; deliberately not the key passphrase, so one leak does not open both).
    """
    logger = get_run_logger()
    _clean_start()
    url = to or os.environ.get(BACKUP_URL_ENV)
    if not url:
        raise ConfigError(
            "No backup destination was given.", f"Pass to=<path or s3://bucket/prefix/> or set {BACKUP_URL_ENV}."
        )
    passphrase = _passphrase(passphrase_block, (BACKUP_PASSPHRASE_ENV,), "backup passphrase")
    archive = _archive_settings(config)
    made = backup_key_folder(Path(dir).absolute(), url, passphrase, archive)
    logger.info("backup written to %s (%d files, %d bytes)", made.url, len(made.files), made.size)
    # A backup only counts once it restores: restore into a private scratch folder (0700,
    # locked while used so a killed run's copy is swept by the next command), compare
    # fingerprints, then remove the restored keys.
    scratch, lock = claim_workdir("ibreports-verify-")
    try:
        restored = restore_keys(made.url, scratch / "keys", passphrase, archive)
    finally:
        release_workdir(scratch, lock)
    if restored.fingerprints != made.fingerprints:
        raise KeyMaterialError(
            f"The backup {made.url} restores keys with other fingerprints than the key folder's.",
            "Do not rely on this backup: run backup-keys again and check the destination.",
        )
    lines = [f"# Key backup `{made.url}`", "", f"{len(made.files)} files, verified by a test restore.", ""]
    for folder, fps in sorted(made.fingerprints.items()):
        lines += [f"- {folder or 'keys'}: " + ", ".join(f"{k} `{v}`" for k, v in sorted(fps.items()))]
    create_markdown_artifact(key="ibreports-key-backup", markdown="\n".join(lines) + "\n")
    return {"url": made.url, "files": len(made.files), "fingerprints": made.fingerprints, "verified": True}
