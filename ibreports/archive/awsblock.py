"""``[archive] aws_credentials_block``: the S3 archive's credentials from a prefect-aws AwsCredentials block.

prefect-aws (``pip install 'ibreports[aws]'``) and Prefect are imported here, lazily, only when a
config names a block, like the ``prefect:`` secret resolver: the library imports no Prefect.
A block is loaded once per process and its keys are never part of a message.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..errors import ArchiveConfigError

_CACHE: dict[str, BlockCredentials] = {}
_LOCK = threading.Lock()

SAVE_HINT = ("python -c \"import getpass; from prefect_aws import AwsCredentials; "
             "AwsCredentials(aws_access_key_id=input('Access key ID: '), "
             "aws_secret_access_key=getpass.getpass('Secret access key: ')).save('{name}', overwrite=True)\"")


@dataclass(frozen=True)
class BlockCredentials:
    """What the archive takes from an AwsCredentials block; ``repr`` never shows a key."""

    session: dict  # boto3.session.Session keyword arguments: keys, session token, profile
    region: str = ""
    endpoint_url: str = ""

    def __repr__(self) -> str:
        return f"BlockCredentials(fields={sorted(self.session)}, region={self.region!r})"


def block_credentials(name: str) -> BlockCredentials:
    """The credentials of AwsCredentials block ``name``; ArchiveConfigError (exit 2) naming the remedy."""
    with _LOCK:
        if name not in _CACHE:
            _CACHE[name] = _load(name)
        return _CACHE[name]


def _load(name: str) -> BlockCredentials:
    try:
        from prefect_aws import AwsCredentials  # lazy: only a config that names a block needs prefect-aws
    except ImportError:
        raise ArchiveConfigError(
            f"archive.aws_credentials_block names the AwsCredentials block '{name}', but prefect-aws is not installed.",
            "Install it with: pip install -c constraints.txt 'ibreports[aws]' (or remove aws_credentials_block).",
        ) from None
    try:
        block = AwsCredentials.load(name)
    except Exception as exc:  # noqa: BLE001 - missing block, unreachable API, wrong block type: all configuration
        raise ArchiveConfigError(
            f"archive.aws_credentials_block refers to AwsCredentials block '{name}', which could not be loaded "
            f"({type(exc).__name__}).",
            f"Create it with: {SAVE_HINT.format(name=name)}, and check PREFECT_API_URL.",
        ) from None
    secret = block.aws_secret_access_key.get_secret_value() if block.aws_secret_access_key else None
    fields = {"aws_access_key_id": block.aws_access_key_id, "aws_secret_access_key": secret,
              "aws_session_token": block.aws_session_token, "profile_name": block.profile_name}
    session = {key: value for key, value in fields.items() if value}
    if bool(session.get("aws_access_key_id")) != bool(session.get("aws_secret_access_key")):
        raise ArchiveConfigError(
            f"AwsCredentials block '{name}' (archive.aws_credentials_block) has only half of a key pair.",
            "Set both aws_access_key_id and aws_secret_access_key in the block, or neither (then profile_name).",
        )
    params = block.aws_client_parameters
    endpoint = str(params.endpoint_url or "") if params is not None else ""
    return BlockCredentials(session=session, region=block.region_name or "", endpoint_url=endpoint)
