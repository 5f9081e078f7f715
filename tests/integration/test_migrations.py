"""Schema migrations per service, on SQLite and PostgreSQL: a new database reaches a schema that
matches the models, a database made by create_all before migrations existed is adopted with its
rows, a later revision upgrades a database holding data, replicas migrating together do not
collide, and a database a newer version migrated does not stop an older one from starting."""

from __future__ import annotations

import asyncio
import importlib
import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from sqlalchemy import MetaData, insert, inspect, select, text

from orderflow.cli import main
from shared import migrations, subjects
from shared.db import Database
from tests.conftest import settings_for
from tests.integration.harness import running

SERVICES = subjects.SERVICES


def schema_of(service: str) -> tuple[Path, MetaData]:
    models = importlib.import_module(f"services.{service}.models")
    return models.MIGRATIONS, models.metadata


@pytest.mark.parametrize("service", SERVICES)
async def test_a_new_database_migrates_to_the_schema_of_the_models(
    database_url: str, service: str
) -> None:
    location, metadata = schema_of(service)
    db = Database(database_url, metadata)
    try:
        first = await migrations.upgrade(db, service, location)
        assert (first.before, first.after, first.adopted) == (None, first.head, False)
        async with db.engine.connect() as conn:
            # A model changed without a revision shows up here.
            assert await conn.run_sync(migrations.differences, metadata) == []
        again = await migrations.upgrade(db, service, location)
        assert again.before == again.after == first.head
        assert "nothing to do" in again.describe()
    finally:
        await db.close()


async def test_a_database_made_before_migrations_is_adopted_with_its_rows(
    database_url: str,
) -> None:
    location, metadata = schema_of("intake")
    db = Database(database_url, metadata)
    try:
        await db.create_schema()  # how every service made its tables before migrations
        async with db.transaction() as conn:
            await conn.execute(
                insert(metadata.tables["customers"]),
                {"customer_key": "mei@example.com", "tier": "gold", "updated_at": 1.0},
            )
        result = await migrations.upgrade(db, "intake", location)
        assert result.adopted and result.after == result.head
        assert "existing schema" in result.describe()
        async with db.reading() as conn:
            rows = (await conn.execute(select(metadata.tables["customers"]))).all()
            assert [(r.customer_key, r.tier) for r in rows] == [("mei@example.com", "gold")]
            assert await conn.run_sync(migrations.differences, metadata) == []
    finally:
        await db.close()


async def test_a_database_create_all_made_of_the_newest_models_is_stamped(
    database_url: str,
) -> None:
    location, metadata = schema_of("inventory")
    db = Database(database_url, metadata)
    try:
        await db.create_schema()
        result = await migrations.upgrade(db, "inventory", location)
        assert (result.adopted, result.after) == (True, result.head)
        assert await migrations.current_revision(db) == result.head
    finally:
        await db.close()


async def test_the_previous_releases_database_is_upgraded_with_its_rows(
    database_url: str,
) -> None:
    """Inventory's database as the release before migrations left it (the baseline's tables, no
    revision recorded) gets revision 0002's column, and keeps its rows."""
    location, metadata = schema_of("inventory")
    db = Database(database_url, metadata)
    try:
        await migrations.upgrade(db, "inventory", location, target="0001")
        async with db.transaction() as conn:
            await conn.execute(text("DROP TABLE alembic_version"))
            await conn.execute(
                text(
                    "INSERT INTO warehouses (code, rank, country, created_at) "
                    "VALUES ('WH-9', 9, 'CN', 1.0)"
                )
            )
        result = await migrations.upgrade(db, "inventory", location)
        assert (result.adopted, result.before, result.after) == (True, None, result.head)
        assert result.head >= "0002"
        async with db.reading() as conn:
            row = (await conn.execute(select(metadata.tables["warehouses"]))).one()
            assert (row.code, row.rank, row.updated_by) == ("WH-9", 9, None)
            assert await conn.run_sync(migrations.differences, metadata) == []
    finally:
        await db.close()


NEXT_REVISION = '''"""orders get a note (a test revision)"""

import sqlalchemy as sa
from alembic import op

revision = "0099"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("customers") as batch_op:
        batch_op.add_column(sa.Column("note", sa.String(100), nullable=True))
    op.execute("UPDATE customers SET note = 'since ' || tier")


def downgrade() -> None:
    with op.batch_alter_table("customers") as batch_op:
        batch_op.drop_column("note")
'''


async def test_a_later_revision_upgrades_a_database_with_data_and_older_code_still_starts(
    database_url: str, tmp_path: Path
) -> None:
    location, metadata = schema_of("intake")
    newer = tmp_path / "migrations"
    shutil.copytree(location, newer, ignore=shutil.ignore_patterns("__pycache__"))
    head = migrations.head_of(location)
    (newer / "versions" / "0099_note.py").write_text(NEXT_REVISION.format(head=head))
    db = Database(database_url, metadata)
    try:
        await migrations.upgrade(db, "intake", location)
        async with db.transaction() as conn:
            await conn.execute(
                insert(metadata.tables["customers"]),
                {"customer_key": "tel:8613800000000", "tier": "key", "updated_at": 2.0},
            )
        result = await migrations.upgrade(db, "intake", newer)
        assert (result.before, result.after) == (head, "0099")
        async with db.reading() as conn:
            note = (await conn.execute(text("SELECT note FROM customers"))).scalar_one()
            assert note == "since key"
        # The previous version of the service (rolled back) meets a schema it does not know.
        older = await migrations.upgrade(db, "intake", location)
        assert older.ahead and older.after == "0099"
        assert "newer than this version knows" in older.describe()
        assert await migrations.current_revision(db) == "0099"
    finally:
        await db.close()


# Replicas share a database on PostgreSQL only.
@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_replicas_migrating_together_do_not_collide(database_url: str) -> None:
    location, metadata = schema_of("inventory")
    replicas = [Database(database_url, metadata) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(migrations.upgrade(db, "inventory", location) for db in replicas)
        )
        assert sorted(r.before is None for r in results) == [False, False, True]
        assert {r.after for r in results} == {results[0].head}
        async with replicas[0].reading() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert set(metadata.tables) <= tables
    finally:
        for db in replicas:
            await db.close()


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_orderflow_migrate_brings_a_database_to_head_and_shows_it(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'notify.db'}"
    code, out, _ = run_cli("migrate", "notify", "--database-url", url)
    assert code == 0 and "notify: migrated from empty to revision" in out
    head = migrations.head_of(schema_of("notify")[0])
    code, out, _ = run_cli("migrate", "notify", "--database-url", url, "--show")
    assert (code, out.strip()) == (0, f"notify: database at {head}, newest {head}")
    code, _, err = run_cli("migrate", "notify", "--database-url", url, "--to", "nonesuch")
    assert code == 1 and "cannot migrate to 'nonesuch'" in err
    unreachable = "postgresql+asyncpg://nobody@127.0.0.1:1/none"
    code, _, err = run_cli("migrate", "notify", "--database-url", unreachable)
    assert code == 2 and "cannot open the database" in err


async def test_a_service_migrates_its_database_at_start_up(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    from services.fulfillment.app import create_service

    settings = settings_for(nats_url, database_url, tmp_path)
    async with running(create_service(settings)) as rt:
        assert rt.migrations is not None
        assert await migrations.current_revision(rt.db) == migrations.head_of(rt.migrations)
