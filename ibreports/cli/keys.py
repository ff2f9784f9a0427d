"""`ibreports keygen` and `ibreports keys backup|restore|verify`."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from ..config import config_path
from .common import BACKUP_PASSPHRASE_ENV, KEY_PASSPHRASE_ENV, archive_settings, read_passphrase

IBKR_REPORTING = "reportingintegration@interactivebrokers.com"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keygen", help="generate the sFTP and PGP key pairs to register with IBKR")
    p.add_argument("--dir", default="keys", help="key folder (default: keys; created 0700)")
    p.add_argument("--name", default="ibreports", help="name on the PGP key (default: ibreports)")
    p.add_argument("--email", default=None, help="e-mail on the PGP key (default: none)")
    p.add_argument("--rsa-bits", type=int, default=4096, help="sFTP RSA key size (default 4096, minimum 2048)")
    p.add_argument("--pgp-bits", type=int, default=4096, help="PGP RSA key size (default 4096, 2048..4096)")
    p.add_argument("--pgp-expire", default="0", help="PGP key expiry: 0 = never (default), or e.g. 365, 2y")
    p.add_argument("--force", action="store_true", help="retire existing keys into <dir>/retired/<timestamp>/")
    p.add_argument("--passphrase-file", metavar="PATH", help=f"file holding the key passphrase (else ${KEY_PASSPHRASE_ENV} or a prompt)")
    p.set_defaults(handler=keygen)

    keys = sub.add_parser("keys", help="back up, restore or check the key folder")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    pass_help = f"file holding the backup passphrase (else ${BACKUP_PASSPHRASE_ENV} or a prompt)"
    from_help = ("the bundle: a local path or s3://bucket/key, or the folder keys backup --to wrote to "
                 "(a local folder or a URL ending in '/': its newest bundle)")
    b = ksub.add_parser("backup", help="write an encrypted bundle of the key folder to a path or s3://")
    b.add_argument("--to", required=True, metavar="URL",
                   help="local path or s3://bucket/key (a folder, or a URL ending in '/', gets a dated file name)")
    b.add_argument("--dir", default="keys", help="key folder (default: keys)")
    b.add_argument("--passphrase-file", metavar="PATH", help=pass_help)
    b.set_defaults(handler=backup)
    r = ksub.add_parser("restore", help="restore a bundle after checking it; refuses to overwrite different keys")
    r.add_argument("--from", required=True, dest="source", metavar="URL", help=from_help)
    r.add_argument("--dir", default="keys", help="key folder (default: keys)")
    r.add_argument("--force", action="store_true", help="retire different existing files into <dir>/retired/<timestamp>/")
    r.add_argument("--allow-older", action="store_true",
                   help="restore a bundle older than what it replaces (the newer bundle its dated name stands "
                        "for, or newer keys in --dir; --force alone does not allow it)")
    r.add_argument("--passphrase-file", metavar="PATH", help=pass_help)
    r.set_defaults(handler=restore)
    v = ksub.add_parser("verify", help="decrypt and check a bundle without writing anything")
    v.add_argument("--from", required=True, dest="source", metavar="URL", help=from_help)
    v.add_argument("--passphrase-file", metavar="PATH", help=pass_help)
    v.set_defaults(handler=verify)


def keygen(args: argparse.Namespace) -> int:
    from ..keys import check_request, generate_keys  # lazy: cryptography/gnupg only when needed

    folder = Path(args.dir)
    # Everything that can be refused is refused before the passphrase is asked for.
    check_request(folder, args.name, args.email, args.rsa_bits, args.pgp_bits, args.pgp_expire, args.force)
    passphrase = read_passphrase(KEY_PASSPHRASE_ENV, args.passphrase_file, "key passphrase")
    rep = generate_keys(
        folder, passphrase, name=args.name, email=args.email, rsa_bits=args.rsa_bits,
        pgp_bits=args.pgp_bits, pgp_expire=args.pgp_expire, force=args.force,
    )
    if rep.folder_note:
        print(rep.folder_note)
    if rep.retired:
        print(f"Old keys moved to {rep.retired}")
    expiry = "never expires" if rep.pgp_expire == "0" else f"expires in {rep.pgp_expire}"
    print(f"""
sFTP key  {folder / 'ibkr_sftp_rsa'}  (RSA {rep.rsa_bits}, passphrase-protected)
          fingerprint {rep.ssh_fingerprint}
          public key  {folder / 'ibkr_sftp_rsa.pub'}
PGP key   {folder / 'ibkr_pgp_secret.asc'}  (RSA {rep.pgp_bits} + RSA {rep.pgp_bits} encryption subkey, {expiry})
          fingerprint {rep.pgp_fingerprint}
          uid         {rep.pgp_uid}
          public key  {folder / 'ibkr_pgp_public.asc'}

Next steps:
  1. Email {folder / 'ibkr_sftp_rsa.pub'} to IBKR's Reporting Integration team
     ({IBKR_REPORTING}) with your IBKR username, asking for sFTP access.
     They also whitelist your public IP address: include it.
  2. In Client Portal (Performance & Reports > Statements / Flex Queries delivery settings),
     upload {folder / 'ibkr_pgp_public.asc'} so statements are delivered encrypted to this key.
  3. Back the keys up now (lost keys mean a new registration with IBKR):
       ibreports keys backup --dir {folder} --to s3://YOUR-BUCKET/ibreports/keys.bundle
     (or a path on another disk). Keep the passphrase somewhere other than the keys.""")
    return 0


def backup(args: argparse.Namespace) -> int:
    from ..bundle import backup_keys

    archive = archive_settings(args.config) if args.to.startswith("s3://") else None
    passphrase = read_passphrase(BACKUP_PASSPHRASE_ENV, args.passphrase_file, "backup passphrase")
    rep = backup_keys(Path(args.dir), args.to, passphrase, archive)
    print(f"Backed up {len(rep.files)} files from {args.dir} to {rep.url} ({rep.size} bytes, AES-256-GCM, scrypt).")
    _print_fingerprints(rep.fingerprints)
    print(f"Check it any time with: {verify_command(args, rep.url)}")
    return 0


def verify_command(args: argparse.Namespace, url: str) -> str:
    """The `keys verify` line that checks this very bundle: the same config (an s3:// bundle's endpoint and
    credentials come from it) and passphrase file."""
    cmd = ["ibreports"]
    if args.config or url.startswith("s3://") and (os.environ.get("IBREPORTS_CONFIG") or config_path().exists()):
        cmd += ["--config", str(config_path(args.config))]
    cmd += ["keys", "verify", "--from", url]
    if args.passphrase_file:
        cmd += ["--passphrase-file", str(Path(args.passphrase_file).absolute())]
    return shlex.join(cmd)


def restore(args: argparse.Namespace) -> int:
    from ..bundle import restore_keys

    archive = archive_settings(args.config) if args.source.startswith("s3://") else None
    passphrase = _existing_backup_passphrase(args)
    rep = restore_keys(args.source, Path(args.dir), passphrase, archive, force=args.force,
                       allow_older=args.allow_older)
    if rep.folder_note:
        print(rep.folder_note)
    if rep.retired:
        print(f"Different existing files moved to {rep.retired}")
    print(f"Restored {len(rep.written)} files from {rep.url} into {rep.dir} ({len(rep.unchanged)} already identical):")
    for rel in rep.written:
        print(f"  {rel}")
    if rep.created:
        print(f"The bundle was made {rep.created}; its keys:")
    _print_fingerprints(rep.fingerprints)
    return 0


def verify(args: argparse.Namespace) -> int:
    from ..bundle import verify_backup

    archive = archive_settings(args.config) if args.source.startswith("s3://") else None
    passphrase = _existing_backup_passphrase(args)
    manifest = verify_backup(args.source, passphrase, archive)
    print(f"{manifest.url}: OK, {len(manifest.files)} files, made {manifest.created}; "
          "every checksum and fingerprint matches.")
    _print_fingerprints(manifest.fingerprints)
    return 0


def _existing_backup_passphrase(args: argparse.Namespace) -> str:
    # Asked once, and not held to the rules for new passphrases: a wrong one just fails the tag check.
    return read_passphrase(
        BACKUP_PASSPHRASE_ENV, args.passphrase_file, "backup passphrase", confirm=False, validate=False
    )


def _print_fingerprints(fingerprints: dict[str, dict[str, str]]) -> None:
    for folder, fps in sorted(fingerprints.items(), key=lambda kv: (kv[0] != "", kv[0])):
        label = folder or "current keys"
        parts = [f"sFTP {fps['ssh']}" if "ssh" in fps else "", f"PGP {fps['pgp']}" if "pgp" in fps else ""]
        print(f"  {label}: {'  '.join(p for p in parts if p)}")
