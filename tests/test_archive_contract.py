"""One contract, every archive: the local folder and S3 (moto over HTTP) must behave alike."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from ibreports.archive import FEATURES, Archive, ObjectInfo, open_archive
from ibreports.archive.local import LocalArchive
from ibreports.archive.s3 import S3Archive
from ibreports.config import ArchiveConfig
from ibreports.errors import ArchiveError
from tests.fixtures.s3 import s3_archive_config, s3_test_client

HOSTILE_KEYS = ["../x", "/abs", "a/../../b", "a/./b", "a//b", "a/", "", ".", "..", "a\\b", "a\x00b", "a\nb"]


@dataclass
class Backend:
    """An archive plus a view of its raw storage, independent of the code under test."""

    kind: str
    archive: Archive
    snapshot: Callable[[], set]  # every stored thing, including temp files / versions / pending uploads
    versions: Callable[[str], int]  # how many stored versions of a key


def _local(tmp_path: Path) -> Backend:
    root = tmp_path / "archive"
    archive = open_archive(ArchiveConfig(url=str(root)))
    assert isinstance(archive, LocalArchive)

    def snapshot() -> set:  # the whole parent folder: catches writes that escape the root
        return {(str(p.relative_to(tmp_path)), p.stat().st_size if p.is_file() else -1) for p in tmp_path.rglob("*")}

    return Backend("local", archive, snapshot, lambda key: int((root / key).is_file()))


def _s3(endpoint: str, bucket: str) -> Backend:
    archive = open_archive(s3_archive_config(endpoint, bucket))
    assert isinstance(archive, S3Archive)
    client = s3_test_client(endpoint)

    def listing() -> tuple[list, list]:
        out = client.list_object_versions(Bucket=bucket)
        return out.get("Versions", []), out.get("DeleteMarkers", [])

    def snapshot() -> set:
        versions, markers = listing()
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return ({(v["Key"], v["VersionId"], v["Size"]) for v in versions}
                | {(m["Key"], m["VersionId"], "delete-marker") for m in markers}
                | {(u["Key"], u["UploadId"], "upload") for u in uploads})

    def versions(key: str) -> int:
        return sum(1 for v in listing()[0] if v["Key"] == f"ib/{key}")

    return Backend("s3", archive, snapshot, versions)


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        return _local(tmp_path)
    return _s3(request.getfixturevalue("s3_server"), request.getfixturevalue("s3_versioned_bucket"))


# What each archive declares; a feature's tests run on the archives that declare it.
DECLARED = {"local": frozenset(), "s3": frozenset({"object_lock"})}


def test_each_archive_declares_its_features(backend):
    assert backend.archive.features == DECLARED[backend.kind]
    assert backend.archive.features <= set(FEATURES)


def _file(tmp_path: Path, name: str, data: bytes) -> tuple[Path, str]:
    path = tmp_path / "staging" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _read(backend: Backend, key: str, tmp_path: Path) -> bytes:
    dest = tmp_path / "out" / f"{hashlib.sha1(key.encode()).hexdigest()}-{os.urandom(4).hex()}"
    dest.parent.mkdir(exist_ok=True)
    backend.archive.get(key, dest)
    return dest.read_bytes()


def test_put_then_inventory_lists_key_and_size(backend, tmp_path):
    a, sha_a = _file(tmp_path, "a", b"<FlexQueryResponse/>\n")
    b, sha_b = _file(tmp_path, "b", b"x" * 1234)
    assert backend.archive.put("statements/U1234567/2026/11/a.xml", a, sha_a, {"source": "ibkr-sftp"}) is True
    assert backend.archive.put("originals/b.xml.pgp", b, sha_b, {}) is True
    assert backend.archive.inventory() == {
        "statements/U1234567/2026/11/a.xml": ObjectInfo("statements/U1234567/2026/11/a.xml", 21),
        "originals/b.xml.pgp": ObjectInfo("originals/b.xml.pgp", 1234),
    }


def test_empty_archive_has_empty_inventory(backend):
    assert backend.archive.inventory() == {}


def test_put_of_existing_key_returns_false_and_changes_nothing(backend, tmp_path):
    first, sha_first = _file(tmp_path, "first", b"the original statement")
    second, sha_second = _file(tmp_path, "second", b"a different, longer statement body")
    assert backend.archive.put("k/statement.xml", first, sha_first, {}) is True
    before = backend.snapshot()
    assert backend.archive.put("k/statement.xml", second, sha_second, {}) is False
    assert backend.archive.put("k/statement.xml", first, sha_first, {}) is False
    assert backend.snapshot() == before
    assert backend.versions("k/statement.xml") == 1
    assert _read(backend, "k/statement.xml", tmp_path) == b"the original statement"


def test_wrong_sha256_is_refused_and_leaves_nothing(backend, tmp_path):
    path, _ = _file(tmp_path, "a", b"payload")
    wrong = hashlib.sha256(b"something else").hexdigest()
    before = backend.snapshot()
    with pytest.raises(ArchiveError, match="SHA-256"):
        backend.archive.put("k/a.xml", path, wrong, {})
    assert backend.snapshot() == before
    assert backend.archive.inventory() == {}


def test_get_round_trips_bytes_into_a_private_file(backend, tmp_path):
    data = bytes(range(256)) * 40
    path, sha = _file(tmp_path, "a", data)
    backend.archive.put("k/a.bin", path, sha, {}, private=True)
    dest = tmp_path / "restored"
    backend.archive.get("k/a.bin", dest)
    assert dest.read_bytes() == data
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600


def test_get_of_missing_key_raises_and_creates_nothing(backend, tmp_path):
    dest = tmp_path / "nothing"
    with pytest.raises(ArchiveError, match="not in the archive"):
        backend.archive.get("no/such/key.xml", dest)
    assert not dest.exists()


def test_get_never_overwrites_an_existing_destination(backend, tmp_path):
    path, sha = _file(tmp_path, "a", b"archived")
    backend.archive.put("k/a", path, sha, {})
    dest = tmp_path / "existing"
    dest.write_bytes(b"keep me")
    with pytest.raises(ArchiveError):
        backend.archive.get("k/a", dest)
    assert dest.read_bytes() == b"keep me"


def test_put_bytes_creates_then_replaces(backend, tmp_path):
    backend.archive.put_bytes("runs/2026-11-22.json", b'{"run": 1}', {"kind": "run-record"})
    backend.archive.put_bytes("runs/2026-11-22.json", b'{"run": 2, "more": true}')
    assert _read(backend, "runs/2026-11-22.json", tmp_path) == b'{"run": 2, "more": true}'
    assert backend.archive.inventory() == {"runs/2026-11-22.json": ObjectInfo("runs/2026-11-22.json", 24)}


def test_big_file_round_trip(backend, tmp_path):
    data = os.urandom(20 * 1024 * 1024 + 12345)  # above S3Archive.single_put_limit: multipart there
    path, sha = _file(tmp_path, "big", data)
    assert backend.archive.put("big/report.zip", path, sha, {"source": "x"}) is True
    assert backend.archive.put("big/report.zip", path, sha, {}) is False
    assert backend.archive.inventory()["big/report.zip"].size == len(data)
    assert hashlib.sha256(_read(backend, "big/report.zip", tmp_path)).hexdigest() == sha
    assert backend.versions("big/report.zip") == 1


def test_big_file_with_wrong_sha256_leaves_nothing(backend, tmp_path):
    path, _ = _file(tmp_path, "big", os.urandom(17 * 1024 * 1024))
    before = backend.snapshot()
    with pytest.raises(ArchiveError, match="SHA-256"):
        backend.archive.put("big/x.zip", path, "ab" * 32, {})
    assert backend.snapshot() == before  # S3: the multipart upload was aborted


@pytest.mark.parametrize("key", [
    "statements/U1234567/2026/11/Daily Activity 2026.xml",
    "statements/DU7654321/2026/11/relevé été 株式.csv",
    "odd/name with  two spaces and ' quote & (parens) #hash %percent+plus.xml",
])
def test_keys_with_spaces_and_unicode(backend, tmp_path, key):
    path, sha = _file(tmp_path, "a", key.encode())
    assert backend.archive.put(key, path, sha, {"name": key}) is True
    assert backend.archive.inventory() == {key: ObjectInfo(key, len(key.encode()))}
    assert _read(backend, key, tmp_path) == key.encode()
    assert backend.archive.put(key, path, sha, {}) is False
    backend.archive.delete(key)
    assert backend.archive.inventory() == {}


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_hostile_keys_are_refused_and_write_nothing(backend, tmp_path, key):
    path, sha = _file(tmp_path, "a", b"hostile")
    before = backend.snapshot()
    with pytest.raises(ArchiveError, match="Refused archive key"):
        backend.archive.put(key, path, sha, {})
    with pytest.raises(ArchiveError, match="Refused archive key"):
        backend.archive.put_bytes(key, b"hostile")
    with pytest.raises(ArchiveError, match="Refused archive key"):
        backend.archive.get(key, tmp_path / "dest")
    with pytest.raises(ArchiveError, match="Refused archive key"):
        backend.archive.delete(key)
    assert backend.snapshot() == before
    assert not (tmp_path / "dest").exists()


def test_concurrent_puts_of_one_key_write_exactly_once(backend, tmp_path):
    contents = [bytes([i]) * (256 * 1024 + i) for i in range(8)]
    files = [_file(tmp_path, f"c{i}", data) for i, data in enumerate(contents)]
    barrier = threading.Barrier(len(files))
    results: list = [None] * len(files)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = backend.archive.put("race/statement.xml", files[i][0], files[i][1], {})
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=str) == [False] * 7 + [True], results
    winner = results.index(True)
    assert _read(backend, "race/statement.xml", tmp_path) == contents[winner]
    assert backend.versions("race/statement.xml") == 1


def test_delete_removes_and_is_idempotent(backend, tmp_path):
    path, sha = _file(tmp_path, "a", b"probe")
    backend.archive.put("doctor/probe", path, sha, {})
    backend.archive.delete("doctor/probe")
    assert backend.archive.inventory() == {}
    backend.archive.delete("doctor/probe")
    with pytest.raises(ArchiveError, match="not in the archive"):
        backend.archive.get("doctor/probe", tmp_path / "dest")


def test_description_names_the_archive_without_credentials(backend):
    text = backend.archive.description
    assert text.startswith("/" if backend.kind == "local" else "s3://")
    assert os.environ.get("AWS_SECRET_ACCESS_KEY", "never-set") not in text


def test_put_without_a_caller_hash_stores_the_bytes_and_reads_back_verified(backend, tmp_path):
    data = os.urandom(300_000)
    path, _ = _file(tmp_path, "plain", data)
    assert backend.archive.put("statements/U1/2026/11/p.xml", path, None, {}, private=True) is True
    assert _read(backend, "statements/U1/2026/11/p.xml", tmp_path) == data  # S3: get verifies the stored checksum


def test_inventory_of_one_folder_lists_only_it_with_full_keys(backend, tmp_path):
    path, sha = _file(tmp_path, "x", b"x")
    for key in ("runs/2026/11/a.json", "runs/2026/11/b.json", "statements/U1/2026/11/s.xml", "runsx/c.json"):
        backend.archive.put(key, path, sha, {})
    assert sorted(backend.archive.inventory("runs/")) == ["runs/2026/11/a.json", "runs/2026/11/b.json"]
    assert backend.archive.inventory("nothing-here/") == {}
    assert len(backend.archive.inventory()) == 4
