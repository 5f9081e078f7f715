"""Fill a stopped service's database with a history of N orders, to measure growth.

Every table that gains rows per order gets N rows, generated from the table's own columns (unique
strings for keys, timestamps for floats, small blobs), so the service's indexes and pages are
as large as after N real orders. Outbox rows are marked published, so nothing is re-sent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Boolean, Float, Integer, LargeBinary, MetaData, String, Table, create_engine

# Tables that hold per-order history; catalogue tables (stock, warehouses) stay as seeded.
PER_ORDER_TABLES = {
    "intake": ("orders", "inbox", "outbox"),
    "inventory": ("reservations", "ledger", "inbox", "outbox"),
    "fulfillment": ("shipments", "shipment_log", "inbox", "outbox"),
    "notify": ("recipients", "notifications", "deliveries", "delivery_attempts", "inbox", "outbox"),
}
CHUNK = 20_000


def _value(column: Any, i: int, now: float) -> Any:
    t = column.type
    if isinstance(t, String):
        text = f"hist-{i:09d}"
        limit = t.length or 64
        return text[-limit:] if len(text) > limit else text
    if isinstance(t, Boolean):
        return False
    if isinstance(t, Integer):
        return 1
    if isinstance(t, Float):
        return now - 86_400 + i * 1e-3
    if isinstance(t, LargeBinary):
        return b'{"history":true,"note":"prefilled by orderflow bench"}'
    return None


def _rows(table: Table, n: int, now: float) -> Iterator[list[dict[str, Any]]]:
    columns = [
        c
        for c in table.columns
        if not (c.primary_key and c.autoincrement is True and isinstance(c.type, Integer))
    ]
    chunk: list[dict[str, Any]] = []
    for i in range(n):
        chunk.append({c.name: _value(c, i, now) for c in columns})
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def prefill(service: str, db_path: Path, metadata: MetaData, n: int) -> dict[str, float]:
    """Insert n rows into each per-order table; returns seconds per table."""
    engine = create_engine(f"sqlite:///{db_path}")
    took: dict[str, float] = {}
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA synchronous=OFF")
        for name in PER_ORDER_TABLES[service]:
            table = metadata.tables.get(name)
            if table is None:
                continue
            started = time.monotonic()
            for chunk in _rows(table, n, time.time()):
                conn.execute(table.insert(), chunk)
            took[name] = round(time.monotonic() - started, 1)
    engine.dispose()
    return took
