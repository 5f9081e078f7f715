"""The idempotent inbox: which messages a consumer has applied, kept in the same transaction."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import Column, Float, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db import bulk_insert


def inbox_table(metadata: MetaData) -> Table:
    return Table(
        "inbox",
        metadata,
        Column("consumer", String(64), primary_key=True),
        Column("message_id", String(80), primary_key=True),
        Column("processed_at", Float, nullable=False),
    )


async def already_applied(
    conn: AsyncConnection, table: Table, consumer: str, message_ids: Sequence[str]
) -> set[str]:
    if not message_ids:
        return set()
    result = await conn.execute(
        select(table.c.message_id)
        .where(table.c.consumer == consumer)
        .where(table.c.message_id.in_(message_ids))
    )
    return {row[0] for row in result}


async def record_applied(
    conn: AsyncConnection, table: Table, consumer: str, message_ids: Sequence[str]
) -> None:
    if message_ids:
        now = time.time()
        await bulk_insert(table)(
            conn,
            [{"consumer": consumer, "message_id": m, "processed_at": now} for m in message_ids],
        )
