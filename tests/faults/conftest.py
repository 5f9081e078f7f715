"""Fixtures of the fault tests: a fresh PostgreSQL database a service can be cut off from."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import _create_database, _drop_database, run_outside_loop


@pytest.fixture
def postgres_databases(postgres_server: str) -> Iterator[Callable[[], str]]:
    """Makes fresh databases on the shared PostgreSQL (SQLAlchemy async URLs); drops them after."""
    made: list[str] = []

    def make() -> str:
        name = f"orderflow_f_{uuid.uuid4().hex}"
        run_outside_loop(_create_database(postgres_server, name))
        made.append(name)
        url = make_url(postgres_server).set(drivername="postgresql+asyncpg", database=name)
        return url.render_as_string(hide_password=False)

    try:
        yield make
    finally:
        for name in made:
            run_outside_loop(_drop_database(postgres_server, name))
