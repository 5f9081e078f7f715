"""Fixtures of the integration tests that run the four services together."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from shared import subjects
from tests.conftest import _create_database, _drop_database, run_outside_loop
from tests.integration.audit_system import database_of


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def service_databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A database per service (they share no tables): SQLite files, or fresh PostgreSQL DBs."""
    if request.param == "sqlite":
        yield {s: database_of(tmp_path, s) for s in subjects.SERVICES}
        return
    server: str = request.getfixturevalue("postgres_server")
    names = {s: f"orderflow_t_{s}_{uuid.uuid4().hex[:16]}" for s in subjects.SERVICES}
    for name in names.values():
        run_outside_loop(_create_database(server, name))
    try:
        yield {
            s: make_url(server)
            .set(drivername="postgresql+asyncpg", database=name)
            .render_as_string(hide_password=False)
            for s, name in names.items()
        }
    finally:
        for name in names.values():
            run_outside_loop(_drop_database(server, name))
