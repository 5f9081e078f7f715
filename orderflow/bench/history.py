"""Fill a stopped service's database with a history of N orders, to measure growth.

Every table that gains rows per order gets N rows, generated from the table's own columns (unique
strings for keys, timestamps for floats, small blobs), so the service's indexes and pages are
as large as after N real orders. Outbox rows are marked published, so nothing is re-sent.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Boolean, Float, Integer, LargeBinary, MetaData, String

# Tables that hold per-order history; catalogue tables (stock, warehouses) stay as seeded.
PER_ORDER_TABLES = {
    "intake": ("orders", "inbox", "outbox"),
    "inventory": ("reservations", "ledger", "inbox", "outbox"),
    "fulfillment": ("shipments", "shipment_log", "inbox", "outbox"),
    "notify": ("recipients", "notifications", "deliveries", "delivery_attempts", "inbox", "outbox"),
}


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


def prefill(service: str, db_path: Path, metadata: MetaData, n: int) -> dict[str, float]:
    """Insert n rows into each per-order table; returns seconds per table.

    Plain sqlite3 with tuples: SQLAlchemy's per-row parameter handling would make a million rows
    per table take minutes, and this is set-up, not the code under test.
    """
    took: dict[str, float] = {}
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        now = time.time()
        for name in PER_ORDER_TABLES[service]:
            table = metadata.tables.get(name)
            if table is None:
                continue
            columns = [c for c in table.columns if not _generated(c)]
            sql = (
                f"INSERT INTO {table.name} ({', '.join(c.name for c in columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})"
            )
            started = time.monotonic()
            conn.execute("BEGIN")
            conn.executemany(sql, (tuple(_value(c, i, now) for c in columns) for i in range(n)))
            conn.execute("COMMIT")
            took[name] = round(time.monotonic() - started, 1)
        # Into the database file, as a million orders' worth of checkpoints would have put them;
        # a write-ahead log of a million rows left behind would slow every read until copied.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()
    return took


def prefill_service(service: str, db_path: Path, n: int) -> dict[str, float]:
    """``prefill`` with the service's own tables: callable in a worker process."""
    module = importlib.import_module(f"services.{service}.models")
    return prefill(service, db_path, module.metadata, n)


def prefill_all(home: Path, services: Iterable[str], n: int) -> dict[str, dict[str, float]]:
    """Prefill every service's database, as many at once as there are cores (each file is
    written by its own process; one after the other took over three minutes here)."""
    names = list(services)
    workers = max(1, min(len(names), os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {
            name: pool.submit(prefill_service, name, home / f"{name}.db", n) for name in names
        }
        return {name: future.result() for name, future in futures.items()}


def _generated(column: Any) -> bool:
    return bool(
        column.primary_key and column.autoincrement is True and isinstance(column.type, Integer)
    )
