"""Fixtures of the fault tests: a fresh PostgreSQL database a service can be cut off from."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import _create_database, _drop_database, run_outside_loop


@pytest.fixture
def postgres_database(postgres_server: str) -> Iterator[str]:
    """A fresh database on the shared PostgreSQL (SQLAlchemy async URL); dropped afterwards."""
    name = f"orderflow_f_{uuid.uuid4().hex}"
    run_outside_loop(_create_database(postgres_server, name))
    url = make_url(postgres_server).set(drivername="postgresql+asyncpg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        run_outside_loop(_drop_database(postgres_server, name))
