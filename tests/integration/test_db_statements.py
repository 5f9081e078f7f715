"""Bulk and Query (shared/db.py): statements built once, run on the driver's connection on
SQLite and through SQLAlchemy elsewhere, must give the same rows, join the caller's transaction
and raise SQLAlchemy's errors, on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import (
    CheckConstraint,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    case,
    func,
    select,
    union,
    update,
)
from sqlalchemy.exc import IntegrityError

from shared.db import Bulk, Database, Query, bulk_insert

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("key", String(16), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("rank", Integer, nullable=False),
    Column("level", Integer, CheckConstraint("level >= 0", name="ck_items_level"), nullable=False),
    Column("at", Float),
)
others = Table("others", metadata, Column("key", String(16), primary_key=True))

ROWS = [
    {"key": f"k{i}", "kind": "odd" if i % 2 else "even", "rank": i, "level": 10, "at": None}
    for i in range(6)
]


async def _db(url: str) -> Database:
    db = Database(url, metadata)
    await db.create_schema()
    async with db.transaction() as conn:
        await bulk_insert(items)(conn, ROWS)
        await bulk_insert(others)(conn, [{"key": "k1"}, {"key": "x"}])
    return db


async def test_query_expands_in_lists_and_keeps_literals(database_url: str) -> None:
    db = await _db(database_url)
    by_keys = Query(
        select(items.c.key, items.c.rank)
        .where(items.c.key.in_(bindparam("keys", expanding=True)))
        .where(items.c.kind == "odd")  # a literal: SQLAlchemy makes it a parameter
        .where(items.c.rank >= bindparam("min_rank"))
        .order_by(items.c.key)
    )
    # The same expanding list three times over, as a union.
    seen = Query(
        union(
            select(items.c.key).where(items.c.key.in_(bindparam("ids", expanding=True))),
            select(others.c.key).where(others.c.key.in_(bindparam("ids", expanding=True))),
        )
    )
    try:
        async with db.transaction() as conn:
            got = await by_keys.all(conn, {"keys": ["k0", "k1", "k3", "k5", "nope"], "min_rank": 2})
            assert got == [("k3", 3), ("k5", 5)]
            # A different length of list, same statement.
            assert await by_keys.all(conn, {"keys": ["k1"], "min_rank": 0}) == [("k1", 1)]
            # An empty list is answered too (through SQLAlchemy).
            assert await by_keys.all(conn, {"keys": [], "min_rank": 0}) == []
            assert sorted(await seen.all(conn, {"ids": ["k1", "x", "zz"]})) == [("k1",), ("x",)]
    finally:
        await db.close()


async def test_bulk_update_with_literals_joins_the_transaction(database_url: str) -> None:
    db = await _db(database_url)
    # Like intake's status view: CASE with literal values, and named parameters per row.
    forward = Bulk(
        update(items)
        .where(items.c.key == bindparam("k"))
        .values(
            kind=case((items.c.rank < 3, "moved"), else_=items.c.kind),
            level=items.c.level - bindparam("d"),
            at=bindparam("at"),
        )
    )
    try:
        async with db.transaction() as conn:
            await forward(conn, [{"k": "k1", "d": 4, "at": 1.5}, {"k": "k4", "d": 1, "at": 2.5}])
            # Visible to SQLAlchemy's own statements in the same transaction.
            rows = (
                await conn.execute(
                    select(items.c.key, items.c.kind, items.c.level, items.c.at)
                    .where(items.c.key.in_(["k1", "k4"]))
                    .order_by(items.c.key)
                )
            ).all()
            assert [tuple(r) for r in rows] == [("k1", "moved", 6, 1.5), ("k4", "even", 9, 2.5)]
        # A failing transaction leaves nothing behind, and the error is SQLAlchemy's.
        with pytest.raises(IntegrityError):
            async with db.transaction() as conn:
                await forward(conn, [{"k": "k2", "d": 1, "at": 9.0}])
                await forward(conn, [{"k": "k3", "d": 11, "at": 9.0}])  # level would be -1
        async with db.reading() as conn:
            at = (await conn.execute(select(func.max(items.c.at)))).scalar()
            assert at == 2.5
    finally:
        await db.close()


async def test_bulk_insert_conflict_is_an_integrity_error(database_url: str) -> None:
    db = await _db(database_url)
    try:
        with pytest.raises(IntegrityError):
            async with db.transaction() as conn:
                await bulk_insert(others)(conn, [{"key": "new"}, {"key": "x"}])
        async with db.reading() as conn:
            keys = (await conn.execute(select(others.c.key).order_by(others.c.key))).scalars()
            assert list(keys) == ["k1", "x"]
    finally:
        await db.close()


class _Abandoned(Exception):
    pass


@pytest.mark.parametrize("dedicated_writer", [False, True], ids=["pool", "dedicated-writer"])
async def test_a_unit_of_work_commits_or_rolls_back_whole_whichever_path_wrote(
    database_url: str, dedicated_writer: bool
) -> None:
    # The dedicated writer ends a transaction of driver statements on the driver, and one that
    # also went through SQLAlchemy through SQLAlchemy: both must be all or nothing.
    db = Database(database_url, metadata, dedicated_writer=dedicated_writer)
    await db.create_schema()

    async def keys() -> list[str]:
        async with db.reading() as conn:
            return list((await conn.execute(select(others.c.key).order_by(others.c.key))).scalars())

    try:
        for through_sqlalchemy in (False, True):
            with pytest.raises(_Abandoned):
                async with db.transaction() as conn:
                    await bulk_insert(others)(conn, [{"key": f"lost-{through_sqlalchemy}"}])
                    if through_sqlalchemy:
                        await conn.execute(others.insert().values(key="lost-too"))
                    raise _Abandoned
            with pytest.raises(IntegrityError):
                async with db.transaction() as conn:
                    if through_sqlalchemy:
                        await conn.execute(others.insert().values(key="lost-first"))
                    await bulk_insert(others)(conn, [{"key": "dup"}, {"key": "dup"}])
            assert await keys() == []

        async with db.transaction() as conn:
            await bulk_insert(others)(conn, [{"key": "a"}])
        async with db.transaction() as conn:
            await conn.execute(others.insert().values(key="b"))
            await bulk_insert(others)(conn, [{"key": "c"}])
        async with db.transaction() as conn:
            await conn.execute(update(others).where(others.c.key == "a").values(key="a2"))
        assert await keys() == ["a2", "b", "c"]
    finally:
        await db.close()
