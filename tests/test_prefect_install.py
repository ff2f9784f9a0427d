"""Guard: Prefect's server works with the installed FastAPI.

Prefect 3.8.8 pins no upper bound on FastAPI, and newer FastAPI releases broke
its server (0.151-0.154: deployments rejected with 422; >= 0.155: import error).
A bump of the pin that breaks it fails here in seconds, before the slower
deployment test. Same for SQLAlchemy, whose 2.1 breaks Prefect's scheduler.
"""

from __future__ import annotations

import tomllib
import uuid
from importlib.metadata import version

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from starlette.testclient import TestClient

from tests.prefect_harness import REPO


def _pinned(name: str) -> Requirement:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(Requirement(d) for d in deps if Requirement(d).name == name)


def test_installed_versions_match_the_pins() -> None:
    assert version("prefect") == "3.8.8"
    assert _pinned("fastapi").specifier.contains(version("fastapi"))


def test_sqlalchemy_is_older_than_2_1() -> None:
    # SQLAlchemy 2.1 refuses the bulk insert Prefect 3.8.8's scheduler uses for
    # scheduled runs ("Can't evaluate bulk DML statement"): cron schedules would
    # never fire. test_prefect_deploy shows it end to end; this says why in 0.1 s.
    assert Version(version("sqlalchemy")) < Version("2.1"), "pin SQLAlchemy<2.1 (2.0.58 works)"


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
