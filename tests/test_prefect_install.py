"""Guard: Prefect's server works with the installed FastAPI and SQLAlchemy.

Prefect pins loosely (3.8.8 had no upper bound on FastAPI), and newer releases broke
its server before: FastAPI 0.151-0.154 rejected deployments with 422 (>= 0.155: import
error), and SQLAlchemy 2.1 broke Prefect 3.8.8's scheduler ("Can't evaluate bulk DML
statement": cron schedules never fired; fixed in 3.9). A bump of a pin that breaks
either fails here in seconds, before the slower deployment test.
"""

from __future__ import annotations

import tomllib
import uuid
from importlib.metadata import version

import pytest
from packaging.requirements import Requirement
from starlette.testclient import TestClient

from tests.prefect_harness import REPO


def _pinned(name: str) -> Requirement:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(Requirement(d) for d in deps if Requirement(d).name == name)


def test_installed_versions_match_the_pins() -> None:
    assert _pinned("prefect").specifier.contains(version("prefect"))
    assert str(_pinned("prefect").specifier).startswith("==")  # one verified release, never a range
    for name in ("fastapi", "sqlalchemy"):
        assert _pinned(name).specifier.contains(version(name)), name


def test_the_scheduler_inserts_cron_runs_with_the_installed_sqlalchemy(tmp_path, monkeypatch) -> None:
    # Prefect 3.8.8's scheduler failed on SQLAlchemy 2.1 ("Can't evaluate bulk DML statement"):
    # no scheduled run was ever created. This is the same code path (schedule_runs, its bulk
    # insert) on a real SQLite database; test_prefect_deploy shows it end to end.
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    from prefect.server.api.server import create_app
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    url = f"sqlite+aiosqlite:///{tmp_path / 'scheduler.db'}"
    with temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: url}):
        with TestClient(create_app(webserver_only=True, ignore_cache=True)) as client:
            flow = client.post("/api/flows/", json={"name": "scheduler-guard"}).json()
            body = _deployment(flow["id"])
            del body["work_pool_name"], body["pull_steps"]
            deployment = client.post("/api/deployments/", json=body)
            assert deployment.status_code == 201, deployment.text
            scheduled = client.post(f"/api/deployments/{deployment.json()['id']}/schedule", json={})
            assert scheduled.status_code == 200, scheduled.text
            runs = client.post("/api/flow_runs/filter", json={}).json()
    assert runs and {r["state_type"] for r in runs} == {"SCHEDULED"}
    assert {r["expected_start_time"][11:16] for r in runs} <= {"11:30", "10:30"}  # 06:30 New York (EST/EDT)


HANDLER_REACHED = 418  # what the stand-in database answers: the request got past routing and validation


class _NoDatabase:
    """Stands in for the database: the first thing a handler asks of it ends the request with 418."""

    def session_context(self, *args, **kwargs):
        from fastapi import HTTPException

        raise HTTPException(status_code=HANDLER_REACHED, detail="handler reached")


@pytest.fixture(scope="module")
def api() -> TestClient:
    from prefect.server.api.server import create_app
    from prefect.server.database import provide_database_interface
    from starlette.routing import Mount

    # No lifespan and no database, but routing and request validation (what FastAPI
    # upgrades broke) run exactly as in the real server, up to the handler's first query.
    app = create_app(ephemeral=True)
    (inner,) = [r.app for r in app.routes if isinstance(r, Mount) and r.path == "/api"]
    inner.dependency_overrides[provide_database_interface] = _NoDatabase
    return TestClient(app, raise_server_exceptions=False)


def test_server_app_builds_its_openapi_schema(api: TestClient) -> None:
    paths = api.app.openapi()["paths"]
    assert "/api/deployments/" in paths or "/deployments/" in paths
    assert api.get("/api/health").status_code == 200


def _deployment(flow_id: str) -> dict:
    """The body `prefect deploy` sends for the daily deployment (trimmed)."""
    return {
        "name": "daily",
        "flow_id": flow_id,
        "work_pool_name": "ibreports",
        "entrypoint": "flows/retrieve.py:retrieve_statements",
        "schedules": [{"schedule": {"cron": "30 6 * * *", "timezone": "America/New_York"}, "active": True}],
        "concurrency_limit": 1,
        "concurrency_options": {"collision_strategy": "CANCEL_NEW"},
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": "/srv/ibreports"}}],
        "parameter_openapi_schema": {"type": "object", "properties": {"start": {"type": "string", "format": "date"}}},
    }


def test_a_valid_deployment_body_reaches_the_handler(api: TestClient) -> None:
    # FastAPI 0.151-0.154 answered 422 here; a lost route would be 404/405, a crash 500.
    resp = api.post("/api/deployments/", json=_deployment(str(uuid.uuid4())))
    assert resp.status_code == HANDLER_REACHED, resp.text
    assert resp.json() == {"detail": "handler reached"}


def test_an_invalid_deployment_body_is_rejected_with_422(api: TestClient) -> None:
    resp = api.post("/api/deployments/", json=_deployment("not-a-uuid"))
    assert resp.status_code == 422
    assert ["body", "flow_id"] in [d["loc"] for d in resp.json()["exception_detail"]]
