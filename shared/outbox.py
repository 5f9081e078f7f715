"""The transactional outbox and its relay.

A handler's events are written to the ``outbox`` table in the same transaction as its state
change. After the commit they are published to JetStream with ``Nats-Msg-Id`` = event id, so a
row published twice (relay after a crash, two replicas) is dropped by the stream's duplicate
window. Rows are marked published in the next write transaction, which saves a commit per batch;
a sweeper republishes rows that stayed unmarked (NATS was down, the process died).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from nats.js import JetStreamContext
from sqlalchemy import (
    Column,
    Float,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.contracts.envelope import Envelope
from shared.db import Bulk, Database, bulk_insert
from shared.metrics import ServiceMetrics

log = logging.getLogger(__name__)


def outbox_table(metadata: MetaData) -> Table:
    return Table(
        "outbox",
        metadata,
        Column("event_id", String(36), primary_key=True),
        Column("subject", String(255), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("created_at", Float, nullable=False),
        Column("published_at", Float, nullable=True),
        # The order the event concerns (its correlation id): `orderflow trace` finds it by this.
        Column("order_id", String(64)),
        Index("ix_outbox_order", "order_id"),
        # Partial: only unpublished rows are indexed, so marking a row published removes it from
        # a small index instead of moving it inside a large one.
        Index(
            "ix_outbox_unpublished",
            "created_at",
            sqlite_where=text("published_at IS NULL"),
            postgresql_where=text("published_at IS NULL"),
        ),
    )


# How long a batch of publishes waits for JetStream's acks before leaving them to the relay.
ACK_WAIT_S = 10.0


class Outbox:
    def __init__(self, table: Table, metrics: ServiceMetrics) -> None:
        self.table = table
        self.metrics = metrics
        self._mark = Bulk(
            update(table)
            .where(table.c.event_id == bindparam("eid"))
            .values(published_at=bindparam("at"))
        )
        self.js: JetStreamContext | None = None
        self._to_mark: list[str] = []
        self._inflight: set[str] = set()
        self._tasks: set[asyncio.Task[int]] = set()

    async def write(
        self, conn: AsyncConnection, envelopes: Sequence[Envelope]
    ) -> list[dict[str, Any]]:
        """Add events to the outbox inside the caller's transaction."""
        if not envelopes:
            return []
        now = time.time()
        rows = [
            {
                "event_id": e.event_id,
                "subject": e.subject,
                "payload": e.encode(),
                "created_at": now,
                "published_at": None,
                "order_id": e.correlation_id,
            }
            for e in envelopes
        ]
        await bulk_insert(self.table)(conn, rows)
        return rows

    def take_marks(self) -> list[str]:
        marks, self._to_mark = self._to_mark, []
        return marks

    def restore_marks(self, marks: list[str]) -> None:
        self._to_mark.extend(marks)

    async def mark(self, conn: AsyncConnection, event_ids: list[str]) -> None:
        if event_ids:
            now = time.time()
            await self._mark(conn, [{"eid": e, "at": now} for e in event_ids])

    async def publish_soon(self, rows: list[dict[str, Any]]) -> None:
        """Publish committed rows without waiting for JetStream's acks: they are handed to the
        connection now, so they leave in the same socket write as whatever the caller sends
        next in this turn of the loop (a consumer's acks), and the acks are gathered in the
        background; the rows are marked in a later transaction."""
        futures = await self._send(rows)
        if futures:
            task = asyncio.create_task(self._confirm(futures))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def publish(self, rows: Iterable[dict[str, Any]]) -> int:
        """Publish rows and wait for their acks; returns how many were stored."""
        return await self._confirm(await self._send(rows))

    async def _send(self, rows: Iterable[dict[str, Any]]) -> list[tuple[str, asyncio.Future[Any]]]:
        js = self.js
        if js is None:
            return []
        futures: list[tuple[str, asyncio.Future[Any]]] = []
        for row in rows:
            event_id = row["event_id"]
            if event_id in self._inflight:
                continue
            self._inflight.add(event_id)
            try:
                fut = await js.publish_async(
                    row["subject"], row["payload"], headers={"Nats-Msg-Id": event_id}
                )
            except Exception as exc:
                self._inflight.discard(event_id)
                log.warning("outbox publish of %s failed, the relay will retry: %s", event_id, exc)
                continue
            futures.append((event_id, fut))
        return futures

    async def _confirm(self, futures: list[tuple[str, asyncio.Future[Any]]]) -> int:
        # One deadline for all the acks, not one each: when the stream stops answering (its
        # node died), waiting in turn would hold a service's shutdown for minutes.
        if futures:
            await asyncio.wait([fut for _, fut in futures], timeout=ACK_WAIT_S)
        published = 0
        for event_id, fut in futures:
            self._inflight.discard(event_id)
            problem = (
                "no ack" if not fut.done() else "cancelled" if fut.cancelled() else fut.exception()
            )
            if problem is None:
                self._to_mark.append(event_id)
                published += 1
            else:
                log.warning("no ack for outbox row %s, the relay will retry: %s", event_id, problem)
        self.metrics.outbox_published.inc(published)
        return published

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def relay_once(self, db: Database, min_age_s: float, limit: int = 1000) -> int:
        """Publish rows that were committed but not published (or not marked) in time."""
        marks = self.take_marks()
        if marks:
            try:
                async with db.transaction() as conn:
                    await self.mark(conn, marks)
            except Exception:
                self.restore_marks(marks)
                raise
        async with db.reading() as conn:
            result = await conn.execute(
                select(self.table.c.event_id, self.table.c.subject, self.table.c.payload)
                .where(self.table.c.published_at.is_(None))
                .where(self.table.c.created_at < time.time() - min_age_s)
                .order_by(self.table.c.created_at)
                .limit(limit)
            )
            rows = [dict(r._mapping) for r in result]
            pending = (
                await conn.execute(select(func.count()).where(self.table.c.published_at.is_(None)))
            ).scalar_one()
        self.metrics.outbox_pending.set(pending)
        rows = [r for r in rows if r["event_id"] not in self._inflight]
        if rows:
            log.info("relay republishing %d outbox rows", len(rows))
            return await self.publish(rows)
        return 0

    async def run_relay(self, db: Database, interval_s: float) -> None:
        # First pass at once: rows left by a previous run of this service go out before new work.
        min_age = 0.0
        while True:
            try:
                await self.relay_once(db, min_age_s=min_age)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay pass failed: %s", exc)
            min_age = max(2.0, interval_s * 2)
            await asyncio.sleep(interval_s)
