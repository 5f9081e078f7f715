"""The idempotent inbox: which messages a consumer has applied, kept in the same transaction.

Each row also says where the message came from (subject, stream sequence) and which order it
concerns (its correlation id), so ``orderflow trace`` can show what a service consumed. The
values come from the message the consumer already holds: nothing is looked up on the hot path.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    MetaData,
    String,
    Table,
    bindparam,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db import Query, bulk_insert


class Applied(Protocol):
    """What the inbox records of a message (shared.consumer.Incoming has these fields)."""

    @property
    def message_id(self) -> str: ...
    @property
    def subject(self) -> str | None: ...
    @property
    def stream_seq(self) -> int | None: ...
    @property
    def order_id(self) -> str | None: ...


def inbox_table(metadata: MetaData) -> Table:
    return Table(
        "inbox",
        metadata,
        Column("consumer", String(64), primary_key=True),
        Column("message_id", String(80), primary_key=True),
        Column("processed_at", Float, nullable=False),
        Column("subject", String(255)),
        Column("stream_seq", BigInteger),
        Column("order_id", String(64)),
        Index("ix_inbox_order", "order_id"),
    )


async def already_applied(
    conn: AsyncConnection, table: Table, consumer: str, message_ids: Sequence[str]
) -> set[str]:
    if not message_ids:
        return set()
    rows = await _lookup(table).all(conn, {"consumer": consumer, "ids": list(message_ids)})
    return {row[0] for row in rows}


@functools.cache
def _lookup(table: Table) -> Query:
    """Built once: building the statement for every batch cost more than running it."""
    return Query(
        select(table.c.message_id)
        .where(table.c.consumer == bindparam("consumer"))
        .where(table.c.message_id.in_(bindparam("ids", expanding=True)))
    )


async def record_applied(
    conn: AsyncConnection, table: Table, consumer: str, items: Sequence[Applied]
) -> None:
    if items:
        now = time.time()
        await bulk_insert(table)(
            conn,
            [
                {
                    "consumer": consumer,
                    "message_id": i.message_id,
                    "processed_at": now,
                    "subject": i.subject,
                    "stream_seq": i.stream_seq,
                    "order_id": i.order_id,
                }
                for i in items
            ],
        )
