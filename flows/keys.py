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

from flows.runs import guarded, run_name

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


@flow(name="generate-keys", persist_result=False, flow_run_name=lambda: run_name("generate-keys"))
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
    """Generate the sFTP and PGP key pairs; returns fingerprints only (public keys in the artifact).

    Args:
        dir: Key folder on the worker (made 0700); relative to IBREPORTS_HOME.
        name: Name in the PGP key's user ID.
        email: E-mail in the PGP key's user ID and the sFTP key's comment.
        rsa_bits: Size of the sFTP RSA key.
        pgp_bits: Size of the PGP RSA key (at most 4096).
        pgp_expire: PGP key expiry as gpg takes it (0 = never, 2y, 18m, ...).
        force: Replace existing keys (they are moved to a retired-* folder first).
        passphrase_block: Prefect Secret block with the key passphrase. Default:
            $IBREPORTS_KEY_PASSPHRASE in the worker's environment.
    """
    return guarded(_generate_keys, dir, name, email, rsa_bits, pgp_bits, pgp_expire, force, passphrase_block)


def _generate_keys(dir: str, name: str, email: str | None, rsa_bits: int, pgp_bits: int, pgp_expire: str,
                   force: bool, passphrase_block: str | None) -> dict[str, Any]:
    logger = get_run_logger()
    _clean_start()
    folder = Path(dir).absolute()
    passphrase = _passphrase(passphrase_block, (KEY_PASSPHRASE_ENV,), "key passphrase")
    report = generate_key_pairs(
        folder, passphrase, name=name, email=email, rsa_bits=rsa_bits, pgp_bits=pgp_bits,
        pgp_expire=pgp_expire, force=force,
    )
    logger.info("sFTP key %s, PGP key %s written to %s", report.ssh_fingerprint, report.pgp_fingerprint, folder)
    pgp_public = (folder / "ibkr_pgp_public.asc").read_text().strip()
    create_markdown_artifact(
        key="ibreports-keys",
        markdown=(
            f"# New keys in `{folder}`\n\n"
            f"- sFTP (RSA {report.rsa_bits}): `{report.ssh_fingerprint}`\n"
            f"- PGP (RSA {report.pgp_bits}, {report.pgp_uid}): `{report.pgp_fingerprint}`\n\n"
            "Next: e-mail the sFTP public key (`ibkr_sftp_rsa.pub`, below) to IBKR's Reporting Integration "
            "team (reportingintegration@interactivebrokers.com) with your username, upload the PGP public "
            "key (`ibkr_pgp_public.asc`, below) in Client Portal, and back the keys up (deployment backup-keys).\n\n"
            f"## ibkr_sftp_rsa.pub\n\n```\n{report.ssh_public_key.strip()}\n```\n\n"
            f"## ibkr_pgp_public.asc\n\n```\n{pgp_public}\n```\n"
        ),
    )
    return {
        "dir": str(folder),
        "ssh_fingerprint": report.ssh_fingerprint,
        "pgp_fingerprint": report.pgp_fingerprint,
        "retired": str(report.retired) if report.retired else None,
    }


def config_key_folder(config: str | None) -> Path:
    """The folder of the config's key files ([pgp] secret_key_file, each source's key_file).

    Key files in subfolders of it (e.g. retired keys) are inside the backup too; key
    files in unrelated folders cannot be one backup, so the caller must pass ``dir``.
    """
    path = config_path(config)
    if not path.exists():
        raise ConfigError(f"No dir was given and there is no config file {path} to find the keys from.",
                          "Pass dir=<key folder>, or set IBREPORTS_CONFIG (or the config parameter).")
    cfg = load_config(path)
    files = list(cfg.pgp.secret_key_files)
    for source in cfg.sources:
        key = getattr(source, "key_file", None) or getattr(getattr(source, "settings", None), "key_file", None)
        if key:
            files.append(key)
    folders = sorted({Path(f).absolute().parent for f in files}, key=lambda p: len(p.parts))
    if not folders:
        raise ConfigError(f"{path} names no key files, so there is no key folder to back up.",
                          "Pass dir=<key folder>.")
    top = folders[0]
    outside = [str(f) for f in folders if f != top and top not in f.parents]
    if outside:
        raise ConfigError(f"The key files of {path} are in separate folders ({top}, {', '.join(outside)}).",
                          "Pass dir=<key folder>, one backup-keys deployment per folder.")
    return top


@flow(name="backup-keys", persist_result=False, flow_run_name=lambda: run_name("backup-keys"))
def backup_keys(
    dir: str | None = None,
    to: str | None = None,
    passphrase_block: str | None = None,
    config: str | None = None,
) -> dict[str, Any]:
    """Back the key folder up, then prove the backup restores.

    Args:
        dir: Key folder to back up. Default: the folder of the config's key files
            ([pgp] secret_key_file and the sources' key_file).
        to: Destination (a path or s3://bucket/prefix/). Default: $IBREPORTS_KEY_BACKUP_URL;
            without either the run fails and says what to set.
        passphrase_block: Prefect Secret block with the backup passphrase. Default:
            $IBREPORTS_BACKUP_PASSPHRASE (deliberately not the key passphrase).
        config: Config file (for the key folder and the S3 settings). Default:
            $IBREPORTS_CONFIG, else ibreports.toml in IBREPORTS_HOME.
    """
    return guarded(_backup_keys, dir, to, passphrase_block, config)


def _backup_keys(dir: str | None, to: str | None, passphrase_block: str | None, config: str | None) -> dict[str, Any]:
    logger = get_run_logger()
    _clean_start()
    url = to or os.environ.get(BACKUP_URL_ENV)
    if not url:
        raise ConfigError(
            "No backup destination was given.", f"Pass to=<path or s3://bucket/prefix/> or set {BACKUP_URL_ENV}."
        )
    passphrase = _passphrase(passphrase_block, (BACKUP_PASSPHRASE_ENV,), "backup passphrase")
    archive = _archive_settings(config)
    folder = Path(dir).absolute() if dir else config_key_folder(config)
    logger.info("backing up key folder %s%s", folder, "" if dir else " (the folder of the config's key files)")
    made = backup_key_folder(folder, url, passphrase, archive)
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
