"""Where key bundles live: a local path or s3://, a folder URL's newest bundle, and S3 errors
told as key-backup errors (never with the archive's "run fetch" remedies)."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path

from .config import ArchiveConfig
from .errors import ArchiveError, KeyMaterialError
from .keyfiles import utc_stamp, write_atomic

def default_name(url: str) -> str:
    """``url``, or for a folder (an existing local one, or a URL ending in '/') a dated bundle in it."""
    name = f"{BUNDLE_PREFIX}{utc_stamp()}{BUNDLE_SUFFIX}"
    if url.endswith("/") or (not url.startswith("s3://") and Path(url).is_dir()):
        return url.rstrip("/") + "/" + name
    return url


BUNDLE_PREFIX, BUNDLE_SUFFIX = "ibreports-keys-", ".bundle"  # the dated names of default_name


def newest_bundle(url: str, archive_config: ArchiveConfig | None) -> str:
    """``url`` itself, or for a folder (what ``keys backup --to`` took: a local folder or a URL
    ending in '/') the newest dated bundle in it; the names sort by their UTC timestamp."""
    if url.startswith("s3://"):
        if not url.endswith("/"):
            return url
        from .archive.s3 import S3Archive, parse_s3_url

        bucket, prefix = parse_s3_url(url)
        with bundle_errors(url):
            listed = S3Archive(dataclasses.replace(archive_config or ArchiveConfig(), url=f"s3://{bucket}")).inventory(prefix)
        below = prefix.strip("/") + "/" if prefix.strip("/") else ""
        names = [k[len(below):] for k in listed if k.startswith(below)]
        base = f"s3://{bucket}/{below}"
    else:
        folder = Path(url)
        if not folder.is_dir():
            return url
        names = [p.name for p in folder.iterdir() if p.is_file() and not p.is_symlink()]
        base = str(folder).rstrip("/") + "/"
    bundles = sorted(n for n in names if n.startswith(BUNDLE_PREFIX) and n.endswith(BUNDLE_SUFFIX) and "/" not in n)
    if not bundles:
        raise KeyMaterialError(
            f"{url} holds no key backup ({BUNDLE_PREFIX}<timestamp>{BUNDLE_SUFFIX}).",
            "Pass the bundle's own path or URL, or the folder that ibreports keys backup --to wrote to.",
        )
    return base + bundles[-1]


@contextlib.contextmanager
def bundle_errors(url: str):
    """S3 errors, told as key-backup errors: a missing bundle is a usage error, and no remedy
    points at fetch (the archive's wording)."""
    try:
        yield
    except ArchiveError as exc:
        if "is not in the archive" in exc.message:
            raise KeyMaterialError(
                f"There is no key backup at {url}.",
                "Check the URL: pass what ibreports keys backup --to printed, or the folder URL ending in '/'.",
            ) from None
        if "fetch" in exc.remedy:
            raise type(exc)(exc.message, "Check the URL and the S3 settings ([archive] endpoint_url, region, "
                                         "credentials), then run the keys command again.") from None
        raise


def upload_bundle(archive_config: ArchiveConfig | None, target: str, blob: bytes) -> None:
    """Write ``blob`` to the object ``target`` (s3://bucket/key)."""
    from .archive.s3 import upload_file

    with tempfile.TemporaryDirectory(prefix="ibreports-bundle-") as tmp:
        path = Path(tmp) / "keys.bundle"
        write_atomic(path, blob, 0o600)
        with bundle_errors(target):
            upload_file(archive_config or ArchiveConfig(), target, path)


def read_bundle(url: str, archive_config: ArchiveConfig | None, max_bytes: int) -> bytes:
    """The bytes of the bundle at ``url`` (a local path or s3://bucket/key)."""
    if url.startswith("s3://"):
        from .archive.s3 import download_file

        with tempfile.TemporaryDirectory(prefix="ibreports-bundle-") as tmp:
            dest = Path(tmp) / "keys.bundle"
            with bundle_errors(url):
                download_file(archive_config or ArchiveConfig(), url, dest)
            return dest.read_bytes()
    path = Path(url)
    try:
        if path.stat().st_size > max_bytes:
            raise KeyMaterialError(f"{path} is too large to be a key backup.", "Pass the right --from.")
        return path.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(
            f"The key backup {path} cannot be read ({exc.strerror}).", "Pass the right --from."
        ) from None
