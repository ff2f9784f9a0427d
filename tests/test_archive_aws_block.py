"""[archive] aws_credentials_block: the S3 archive's keys from a prefect-aws AwsCredentials block saved in
a real (ephemeral) Prefect API, against moto over HTTP with IAM enforced, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import boto3
import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.local_api import startup_timeout
from ibreports.archive.awsblock import BlockCredentials
from ibreports.cli import main
from ibreports.config import load_config
from ibreports.errors import ConfigError
from tests.configs import sftp_toml
from tests.fixtures.s3 import iam_enforced, read_only_user, s3_test_client
from tests.helpers import PLAIN, s3_archive, seed, write_config
from tests.prefect_harness import REPO


@pytest.fixture(scope="module", autouse=True)
def prefect_api():
    with prefect_test_harness(server_startup_timeout=startup_timeout()):
        yield


def writer_keys(endpoint: str, bucket: str) -> dict:
    """An IAM user that may do anything on ``bucket``: its keys go into the block, never the environment."""
    iam = boto3.session.Session().client("iam", endpoint_url=endpoint, region_name="us-east-1")
    user = f"writer-{bucket}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"],
                                                       "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
    iam.put_user_policy(UserName=user, PolicyName="archive", PolicyDocument=json.dumps(policy))
    return iam.create_access_key(UserName=user)["AccessKey"]


@pytest.fixture
def env(monkeypatch, pgp_key, sftp_client_key):
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_SSH_PASSPHRASE", sftp_client_key[2])


def test_fetch_and_verify_use_the_blocks_keys_over_the_environments(
        tmp_path, monkeypatch, capsys, env, s3_server, s3_bucket, sshd_factory, sftp_client_key, pgp_key):
    from prefect_aws import AwsCredentials

    keys = writer_keys(s3_server, s3_bucket)
    AwsCredentials(aws_access_key_id=keys["AccessKeyId"], aws_secret_access_key=keys["SecretAccessKey"],
                   region_name="us-east-1").save("ibreports-archive-writer", overwrite=True)
    read_only_user(s3_server, s3_bucket, monkeypatch)  # the environment's keys may not write
    server = sshd_factory([sftp_client_key[1]])
    seed(server.root / "outgoing", pgp_key.public_file)
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key,
                       s3_archive(s3_server, s3_bucket) + 'aws_credentials_block = "ibreports-archive-writer"\n')

    with iam_enforced(s3_server):
        assert main(["fetch", "--config", str(cfg)]) == 0, capsys.readouterr().err
        assert main(["verify", "--config", str(cfg)]) == 0, capsys.readouterr().err
    stored = {o["Key"] for o in s3_test_client(s3_server).list_objects_v2(Bucket=s3_bucket)["Contents"]}
    for name in PLAIN:
        day = name.split(".")[3]
        assert f"ib/statements/{name.split('.')[0]}/{day[:4]}/{day[4:6]}/{name}" in stored

    # The same config without the block: the environment's read-only keys are refused (so the block counted).
    cfg.write_text(cfg.read_text().replace('aws_credentials_block = "ibreports-archive-writer"\n', ""))
    (server.root / "outgoing" / "U5555555.DailyActivity.20261201.20261201.xml").write_bytes(b"<x/>\n")
    with iam_enforced(s3_server):
        assert main(["fetch", "--config", str(cfg)]) == 2
    out = capsys.readouterr()
    assert "Access denied to put" in out.out + out.err  # in the run's table (the console does not repeat it)


def test_a_flow_run_loads_the_block_and_archives_through_it(
        tmp_path, monkeypatch, env, s3_server, s3_bucket, sshd_factory, sftp_client_key, pgp_key):
    from prefect_aws import AwsCredentials

    from flows.retrieve import retrieve_statements

    keys = writer_keys(s3_server, s3_bucket)
    AwsCredentials(aws_access_key_id=keys["AccessKeyId"], aws_secret_access_key=keys["SecretAccessKey"]
                   ).save("ibreports-archive-flow", overwrite=True)
    read_only_user(s3_server, s3_bucket, monkeypatch)
    server = sshd_factory([sftp_client_key[1]])
    seed(server.root / "outgoing", pgp_key.public_file)
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key,
                       s3_archive(s3_server, s3_bucket) + 'aws_credentials_block = "ibreports-archive-flow"\n')
    with iam_enforced(s3_server):
        state = retrieve_statements(config=str(cfg), return_state=True)
    assert state.is_completed(), state.message
    stored = {o["Key"] for o in s3_test_client(s3_server).list_objects_v2(Bucket=s3_bucket)["Contents"]}
    for name in PLAIN:
        day = name.split(".")[3]
        assert f"ib/statements/{name.split('.')[0]}/{day[:4]}/{day[4:6]}/{name}" in stored, sorted(stored)
    assert sum(key.startswith("ib/encrypted/ibkr-sftp/") for key in stored) == len(PLAIN)  # the originals


def test_a_missing_block_is_a_configuration_error_that_says_how_to_create_it(tmp_path, capsys, s3_server, s3_bucket):
    cfg = tmp_path / "ibreports.toml"
    cfg.write_text(s3_archive(s3_server, s3_bucket) + 'aws_credentials_block = "no-such-block"\n')
    assert main(["verify", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "AwsCredentials block 'no-such-block'" in err and "could not be loaded" in err
    assert "AwsCredentials(aws_access_key_id=" in err and ".save('no-such-block'" in err
    assert "Traceback" not in err


def test_the_blocks_secret_key_never_shows_in_its_repr():
    creds = BlockCredentials(session={"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "s3cr3t-value"})
    assert "s3cr3t-value" not in repr(creds) and "AKIAEXAMPLE" not in repr(creds)


def test_a_block_named_for_a_folder_archive_is_refused(tmp_path):
    cfg = tmp_path / "ibreports.toml"
    cfg.write_text('[archive]\nurl = "archive"\naws_credentials_block = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(cfg)
    assert "archive.aws_credentials_block" in str(caught.value) and "folder" in str(caught.value)


def test_without_prefect_aws_the_error_names_the_extra_to_install(tmp_path):
    cfg = tmp_path / "ibreports.toml"
    cfg.write_text('[archive]\nurl = "s3://bucket/ib"\nendpoint_url = "http://127.0.0.1:9"\n'
                   'aws_credentials_block = "ibreports-archive"\n')
    code = ("import sys\nsys.modules['prefect_aws'] = None  # as if the aws extra were not installed\n"
            "from ibreports.cli import main\nsys.exit(main(['verify', '--config', sys.argv[1]]))\n")
    done = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert "prefect-aws is not installed" in done.stderr and "'ibreports[aws]'" in done.stderr
