"""Database setup every service uses: an async engine, SQLite tuned for WAL, a write transaction.

SQLite allows one writer at a time; within one process the writers take an asyncio lock instead
of spinning on SQLITE_BUSY in worker threads. PostgreSQL gets no lock: row locks and conditional
updates in the handlers keep replicas correct there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, event, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.expression import Executable


def serial_id(name: str = "id") -> Column[int]:
    """An auto-numbered primary key: BIGINT on PostgreSQL, INTEGER on SQLite (which only
    auto-numbers an INTEGER PRIMARY KEY)."""
    return Column(
        name, BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )


def driver_sqlite(conn: AsyncConnection) -> sqlite3.Connection | None:
    """The sqlite3 connection under ``conn`` when it is on SQLite, else None.

    Statements on it join the transaction ``conn`` has open (one connection, and sqlite3 begins
    the transaction before the first write either way), and run at once on the event loop, as
    every statement does here (``_InlineSqliteConnection``).
    """
    if conn.dialect.name != "sqlite":
        return None
    driver: Any = conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]
    return driver._conn  # type: ignore[no-any-return]


_POSTCOMPILE = re.compile(r"\(?__\[POSTCOMPILE_(\w+)\]\)?")


class _Plan:
    """A statement compiled for one dialect with positional parameters: its SQL split around
    the expanding (IN-list) parameters, the order of the other parameters, and the values of
    the literals SQLAlchemy turned into parameters."""

    def __init__(self, compiled: Any) -> None:
        self.order: tuple[str, ...] = tuple(compiled.positiontup or ())
        self.defaults: dict[str, Any] = dict(compiled.params)
        self.pieces = _POSTCOMPILE.split(compiled.string)  # sql, name, sql, name, ..., sql
        self.expanding = set(self.pieces[1::2])
        self.sql = compiled.string if not self.expanding else None

    def render(self, params: dict[str, Any]) -> tuple[str, list[Any]]:
        """SQL and arguments for one execution (IN lists spelled out for their lengths)."""
        values = {**self.defaults, **params}
        args: list[Any] = []
        for name in self.order:
            value: Any = values.get(name)
            if name in self.expanding:
                args.extend(value)
            else:
                args.append(value)
        if self.sql is not None:
            return self.sql, args
        parts = [self.pieces[0]]
        for i in range(1, len(self.pieces), 2):
            n = len(values[self.pieces[i]])
            parts.append("(" + ", ".join("?" * n) + ")")
            parts.append(self.pieces[i + 1])
        return "".join(parts), args

    def rows(self, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """Positional arguments for executemany (``map``, not a generator: this runs for every
        row of every inbox, outbox and order insert)."""
        order, defaults = self.order, self.defaults
        if defaults:
            return [tuple(map((defaults | row).get, order)) for row in rows]
        return [tuple(map(row.get, order)) for row in rows]


class _Compiled:
    """A statement compiled once for SQLite, run on the driver's connection there."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._sqlite: _Plan | None = None

    def plan(self, conn: AsyncConnection) -> _Plan:
        if self._sqlite is None:
            self._sqlite = _Plan(self.statement.compile(dialect=conn.dialect))  # type: ignore[attr-defined]
        return self._sqlite


class Bulk(_Compiled):
    """One statement executed for many rows, compiled once and handed straight to the driver's
    executemany.

    SQLAlchemy's own executemany processes every parameter of every row in Python (about 9 µs a
    row per statement here), and its execution path costs ~40 µs more per statement than the
    driver's; the inbox and outbox take a row per message in every transaction, so that was a
    fixed tax on each hop. Rows are dicts keyed by the statement's parameter names (for
    ``insert(table)``, its columns); a missing key is NULL, and no Python-side column defaults
    or type processing apply, which suits plain columns only. On other databases than SQLite
    the statement goes through SQLAlchemy (prebuilt, so it is compiled once there too).
    """

    async def __call__(self, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        raw = driver_sqlite(conn)
        if raw is None:
            await conn.execute(self.statement, list(rows))
            return
        plan = self.plan(conn)
        assert plan.sql is not None, "Bulk statements take no IN lists"
        args = plan.rows(rows)
        try:
            raw.executemany(plan.sql, args)
        except sqlite3.Error as exc:
            raise _as_sqlalchemy(exc, plan.sql, args) from exc


class Query(_Compiled):
    """A SELECT built once (IN lists as ``bindparam(name, expanding=True)``) and, on SQLite,
    run on the driver's connection: a few µs instead of ~60 µs of SQLAlchemy's execution path
    per statement, which a batch of one message pays in full on every hop. Rows are plain
    tuples in the order of the selected columns, without SQLAlchemy's type processing (plain
    columns only). Elsewhere the statement runs through SQLAlchemy."""

    async def all(self, conn: AsyncConnection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        raw = driver_sqlite(conn)
        if raw is None or any(isinstance(v, list | tuple | set) and not v for v in params.values()):
            return [tuple(row) for row in await conn.execute(self.statement, params)]
        sql, args = self.plan(conn).render(params)
        try:
            return raw.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise _as_sqlalchemy(exc, sql, args) from exc


def _as_sqlalchemy(exc: sqlite3.Error, sql: str, args: Any) -> StatementError:
    """The error SQLAlchemy would have raised (IntegrityError, OperationalError, ...): callers
    catch those whichever path ran the statement."""
    return DBAPIError.instance(sql, args, exc, sqlite3.Error)


@functools.cache
def bulk_insert(table: Table) -> Bulk:
    """The ``Bulk`` insert of a table (one per table per process)."""
    return Bulk(insert(table))


class Database:
    def __init__(self, url: str, metadata: MetaData, *, dedicated_writer: bool = False) -> None:
        self.url = make_url(url)
        self.metadata = metadata
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {}
        # The key of this file's write lock (an in-memory database is its own).
        self._sqlite_path = ""
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()
        # SQLite: one connection kept for every write transaction (see ``_writer_connection``).
        self.dedicated_writer = dedicated_writer
        self._writer: AsyncConnection | None = None
        if self.is_sqlite:
            path = self.url.database or ":memory:"
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self._sqlite_path = str(Path(path).resolve())
            else:
                self._sqlite_path = f":memory:{id(self)}"
            kwargs["async_creator"] = _inline_sqlite_connector(path)
        else:
            kwargs["pool_size"] = 10
            kwargs["pool_pre_ping"] = True
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    async def create_schema(self) -> None:
        async with self.engine.begin() as conn:
            if not self.is_sqlite:
                # Replicas starting together on a new database would race on CREATE TABLE;
                # the lock is held until this transaction ends.
                await conn.execute(text("SELECT pg_advisory_xact_lock(7201864215)"))
            await conn.run_sync(self.metadata.create_all)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One unit of work: commits if the block ends normally, rolls back on any error."""
        if self.is_sqlite and self.dedicated_writer:
            async with _write_lock(self._sqlite_path):
                conn = await self._writer_connection()
                try:
                    yield conn
                    await _end(conn, commit=True)
                except BaseException:
                    with contextlib.suppress(Exception):  # the work's own error is the one to see
                        await _end(conn, commit=False)
                    raise
                finally:
                    if conn.invalidated:  # broken: the next transaction opens a new one
                        self._writer = None
                        with contextlib.suppress(Exception):
                            await conn.close()
        elif self.is_sqlite:
            async with _write_lock(self._sqlite_path), self.engine.begin() as conn:
                yield conn
        else:
            async with self.engine.begin() as conn:
                yield conn

    async def _writer_connection(self) -> AsyncConnection:
        """The connection a ``dedicated_writer`` database writes on, kept open.

        From the pool, each write transaction took the connection idle longest, whose page
        cache SQLite had dropped because another connection wrote since; and the checkout and
        reset cost a little each time. Kept for writes only, its cache stays warm. In process,
        a one-message batch of intake's submissions fell from 0.47 to 0.36 ms of CPU and
        inventory's reservations from 0.55 to 0.39 ms. Readers (HTTP, relay, CLI) use the pool.
        """
        if self._writer is None or self._writer.closed:
            self._writer = await self.engine.connect()
        return self._writer

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def checkpoint(self) -> None:
        """Copy SQLite's write-ahead log back into the database file, in a worker thread.

        Left to SQLite, the committing writer does it every 1,000 pages, and statements run on
        the event loop (``_InlineSqliteConnection``), so the copying would stall the loop; on a
        large database it is scattered I/O. A passive checkpoint from its own connection never
        blocks the writer and runs beside it.
        """
        if not self._sqlite_path or self._sqlite_path.startswith(":memory:"):
            return
        await asyncio.to_thread(self._checkpoint_now)

    def _checkpoint_now(self) -> None:
        with self._checkpoint_lock:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(
                    self._sqlite_path, timeout=_BUSY_TIMEOUT_S, check_same_thread=False
                )
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    async def unreachable(self, exc: BaseException) -> bool:
        """Whether ``exc`` came from the database being out of reach, not from the work that
        raised it: the server refuses or dropped the connection (a ping fails now), or another
        process holds a SQLite file locked past the busy timeout. A retry of the same work will
        succeed once it is back, so it is nobody's fault to be charged for."""
        if isinstance(exc, OperationalError) and "database is locked" in str(exc):
            return True
        return not await self.ping()

    async def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            with contextlib.suppress(Exception):
                await writer.close()
        await self.engine.dispose()
        with self._checkpoint_lock:  # a checkpoint still running in its thread ends first
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None


async def _end(conn: AsyncConnection, *, commit: bool) -> None:
    """Commit or roll back the dedicated writer's transaction.

    The unit of work is not opened with SQLAlchemy's ``begin()``: sqlite3 itself begins the
    transaction before the first write, whichever path the statement took (SQLAlchemy or the
    driver statements of ``Query`` and ``Bulk``), and the process-wide write lock keeps every
    other writer out meanwhile. When a statement went through SQLAlchemy, it began its own
    bookkeeping (autobegin) and ends it here; when only driver statements ran, the driver ends
    the transaction directly. SQLAlchemy's begin and commit cost ~70 µs of greenlet hops per
    transaction, which a batch of one paid on every hop of the critical path.
    """
    if conn.in_transaction():
        await (conn.commit() if commit else conn.rollback())
        return
    raw = driver_sqlite(conn)
    assert raw is not None, "only SQLite's dedicated writer ends transactions here"
    if not raw.in_transaction:
        return
    try:
        if commit:
            raw.commit()
        else:
            raw.rollback()
    except sqlite3.Error as exc:
        raise _as_sqlalchemy(exc, "COMMIT" if commit else "ROLLBACK", ()) from exc


_write_locks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = {}


def _write_lock(path: str) -> asyncio.Lock:
    """The writers' lock for one SQLite file, shared by every ``Database`` on it in this process
    (two on one file would otherwise wait on each other's SQLite lock while blocking the loop)."""
    loop = asyncio.get_running_loop()
    found = _write_locks.get(path)
    if found is None or found[0] is not loop:
        found = _write_locks[path] = (loop, asyncio.Lock())
    return found[1]


class _InlineSqliteConnection(aiosqlite.Connection):
    """aiosqlite's API, but each call runs at once on the event loop's thread.

    aiosqlite hands every statement to a worker thread and back (a queue, a future and a wake-up
    of the loop per call): with six to ten statements per batch that hop cost more CPU than the
    statements did. A SQLite statement on a local file in WAL mode takes microseconds, and one
    process is the only writer of its database (the write lock in ``Database``), so waiting for
    it on the loop is cheaper than the hop. The worker thread remains only to open and close.
    """

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)


def _inline_sqlite_connector(path: str) -> Callable[[], Any]:
    async def connect() -> aiosqlite.Connection:
        conn = _InlineSqliteConnection(
            lambda: sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, check_same_thread=False),
            iter_chunk_size=64,
        )
        conn._thread.daemon = True
        return await conn

    return connect


# Another process holding SQLite's write lock (a backup, a manual repair) stalls this one's loop
# for up to this long per attempt; the unit of work then fails, and a consumer holds its messages
# and tries again (``Database.unreachable``) instead of charging them a try.
_BUSY_TIMEOUT_S = 5.0


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers (HTTP, CLI) run beside the writer; NORMAL syncs at checkpoints, which in
    # WAL mode keeps every committed transaction across a process crash.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    # A safety net only: a service checkpoints every second in a thread (Database.checkpoint);
    # a tool that opens the database without it still keeps the log below ~40 MB.
    cur.execute("PRAGMA wal_autocheckpoint=10000")
    cur.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
