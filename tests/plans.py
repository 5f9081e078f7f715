"""Which statements a piece of work ran that read a whole per-order table (SQLite's query plan).

A full scan costs nothing in a test's small database and grows with every order stored: a job
that runs every second and scans reservations cost inventory 77 ms a second with a million
orders stored. Tests of periodic jobs assert they search, never scan, the tables that grow.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from sqlalchemy import event

from shared.db import Database

_SCAN = re.compile(r"SCAN (\w+)")


async def full_scans(
    db: Database, tables: Iterable[str], work: Callable[[], Awaitable[Any]]
) -> list[str]:
    """Run ``work`` on ``db`` (SQLite; every connection it checks out is traced) and return
    each statement it ran whose plan scans one of ``tables``, with that plan line."""
    watched = set(tables)
    statements: list[str] = []
    traced: list[sqlite3.Connection] = []

    def trace(_dbapi: Any, _record: Any, proxy: Any) -> None:
        raw: sqlite3.Connection = proxy.driver_connection._conn
        raw.set_trace_callback(statements.append)
        traced.append(raw)

    # Every connection the work checks out, the driver statements (shared.db.Query, Bulk) too.
    event.listen(db.engine.sync_engine, "checkout", trace)
    try:
        await work()
    finally:
        event.remove(db.engine.sync_engine, "checkout", trace)
        for raw in traced:
            raw.set_trace_callback(None)
    assert traced, "query plans are read from SQLite"
    raw = traced[0]
    found = []
    for sql in statements:
        if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "WITH", "INSERT")):
            continue
        for row in raw.execute("EXPLAIN QUERY PLAN " + sql).fetchall():
            scan = _SCAN.match(row[3])
            if scan and scan.group(1) in watched:
                found.append(f"{row[3]}: {sql}")
    assert statements, "no statement ran: nothing was checked"
    return found
