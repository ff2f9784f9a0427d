"""What a user sees after a run: deletions on the server shown and recorded, no false alarms
about interrupted runs. Real sshd, real gpg, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ibreports.cli import main
from ibreports.report import RunReport, table_rows
from tests.configs import sftp_toml
from tests.helpers import NOBODY, as_other_user, local_archive, write_config


def _latest_record(root: Path) -> dict:
    latest = max((root / "runs").rglob("*.json"), key=lambda p: p.name)
    return json.loads(latest.read_text())


def test_every_deletion_on_the_server_is_shown_and_recorded(tmp_path, sftp_setup, pgp_key, sftp_client_key, capsys):
    server, known_hosts, delivered = sftp_setup
    outgoing = server.root / "outgoing"
    archive_toml, root = local_archive(tmp_path)
    source = sftp_toml(server, sftp_client_key, known_hosts) + "delete_after_archive = true\n"
    cfg = write_config(tmp_path, source, pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 0
    out = capsys.readouterr().out
    assert list(outgoing.iterdir()) == []
    assert out.count("deleted from the server (delete_after_archive") == len(delivered)
    assert f"{len(delivered)} deleted from the server" in out.splitlines()[-1]
    rows = {f["name"]: f for f in _latest_record(root)["files"]}
    assert set(rows) == set(delivered)
    assert all(r["deleted_from_server"] and r["outcome"] == "archived" for r in rows.values())
    # The Prefect artifact's rows say it too.
    artifact = table_rows(RunReport.from_dict(_latest_record(root)))
    assert [r["deleted from server"] for r in artifact] == ["yes"] * len(delivered)


def test_a_second_fetch_after_a_clean_one_reports_no_interrupted_run(tmp_path, sftp_setup, pgp_key, sftp_client_key,
                                                                     caplog):
    server, known_hosts, _ = sftp_setup
    archive_toml, _ = local_archive(tmp_path)
    staging = tmp_path / "staging"
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key,
                       archive_toml + f'\n[run]\nstaging_dir = "{staging}"\n')
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert list(staging.iterdir()) == []
    caplog.clear()
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert "left by an interrupted run" not in caplog.text
    assert main(["--config", str(cfg), "status"]) == 0
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert "left by an interrupted run" not in caplog.text



def test_an_abandoned_folder_that_cannot_be_removed_is_not_reported_removed(tmp_path):
    """Counted only when really gone: else every run would claim to clean up the same folder."""
    base = Path(tempfile.mkdtemp(prefix="ibreports-sweep-"))
    try:
        base.chmod(0o755)
        stuck = base / "ibr-test-stuck"
        (stuck / "theirs").mkdir(parents=True)
        stuck.chmod(0o700)  # as claim_workdir makes them: only such a folder of its own is swept
        (stuck / "theirs" / "file").write_bytes(b"x")
        (stuck / ".in-use").write_bytes(b"")  # unlocked: its run died
        os.chown(base, NOBODY, NOBODY)
        os.chown(stuck, NOBODY, NOBODY)
        os.chown(stuck / ".in-use", NOBODY, NOBODY)  # theirs/ stays root's: nobody cannot empty it
        code = "from pathlib import Path; from ibreports.files import sweep_abandoned; " \
               "print(sweep_abandoned('ibr-test-', Path(sys.argv[1])))"
        done = as_other_user(code, str(base), uid=NOBODY)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "0" and (stuck / "theirs" / "file").exists()
        assert f"could not remove {stuck}, left by an interrupted run" in done.stderr
    finally:
        shutil.rmtree(base)
