"""Versioned schema migrations per service (Alembic), run at start-up and by ``orderflow migrate``.

Each service keeps its revisions in ``services/<name>/migrations/versions``; its ``env.py`` hands
the service's metadata to ``run_environment``. The first revision of every service is the schema
``create_all`` used to make, and creates only the tables that are missing: a database made before
migrations existed is adopted (its tables and rows kept, the revision recorded), not broken. One
whose tables already match the newest models (``create_all`` of this version) is stamped as the
newest revision.

Replicas starting together on PostgreSQL take an advisory lock for the whole migration, which
runs in one transaction (PostgreSQL's DDL is transactional): one replica migrates, the others
wait and then find nothing to do. A database already at a revision this code does not know (a
newer version of the service migrated it, then was rolled back) is left as it is: revisions are
additive, so the older code still works on it, and start-up says so instead of failing.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, MetaData, create_engine, inspect, text

from shared.db import Database

log = logging.getLogger(__name__)

# Held for the length of the migration's transaction; advisory locks are per database.
PG_MIGRATION_LOCK = 7201864215
VERSION_TABLE = "alembic_version"


class MigrationError(RuntimeError):
    """The schema cannot be brought to the wanted revision (said in one sentence)."""


@dataclass(frozen=True)
class MigrationResult:
    service: str
    before: str | None
    after: str | None
    head: str
    adopted: bool = False  # tables existed without a recorded revision
    ahead: bool = False  # the database is at a revision newer than this code knows

    def describe(self) -> str:
        if self.ahead:
            return (
                f"{self.service}: the database is at revision {self.before}, newer than this "
                f"version knows (head {self.head}); left as it is"
            )
        if self.before == self.after:
            return f"{self.service}: schema at revision {self.after} (head), nothing to do"
        start = "an existing schema without a revision" if self.adopted else self.before or "empty"
        return f"{self.service}: migrated from {start} to revision {self.after}"


def config_for(location: Path, connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(location))
    cfg.set_main_option("version_table", VERSION_TABLE)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_of(location: Path) -> str:
    head = ScriptDirectory.from_config(config_for(location)).get_current_head()
    if head is None:
        raise MigrationError(f"no revisions under {location}")
    return head


async def upgrade(
    db: Database, service: str, location: Path, target: str = "head"
) -> MigrationResult:
    """Bring ``db`` to ``target`` (default: the newest revision), safely beside other replicas."""
    async with db.engine.begin() as conn:
        if not db.is_sqlite:
            await conn.execute(text(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})"))
        result: MigrationResult = await conn.run_sync(
            _upgrade, service, location, target, db.metadata
        )
    log.info("%s", result.describe())
    return result


def _upgrade(
    conn: Connection, service: str, location: Path, target: str, metadata: MetaData
) -> MigrationResult:
    cfg = config_for(location, conn)
    script = ScriptDirectory.from_config(cfg)
    head = head_of(location)
    before = MigrationContext.configure(conn).get_current_revision()
    if before is not None and not _known(script, before):
        return MigrationResult(service, before, before, head, ahead=True)
    existing = set(inspect(conn).get_table_names()) - {VERSION_TABLE}
    adopted = before is None and bool(existing)
    try:
        if adopted and target == "head" and not differences(conn, metadata):
            # create_all made exactly today's schema: record it as the newest revision.
            log.info("%s: adopting the existing schema as revision %s", service, head)
            command.stamp(cfg, "head")
        else:
            if adopted:
                log.info(
                    "%s: adopting the existing tables %s", service, ", ".join(sorted(existing))
                )
            command.upgrade(cfg, target)
    except CommandError as exc:
        raise MigrationError(f"{service}: cannot migrate to {target!r}: {exc}") from exc
    after = MigrationContext.configure(conn).get_current_revision()
    return MigrationResult(service, before, after, head, adopted=adopted)


def differences(conn: Connection, metadata: MetaData) -> list[Any]:
    """How the database's tables differ from ``metadata`` (tables it does not describe aside)."""
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return [d for d in compare_metadata(context, metadata) if d[0] != "remove_table"]


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False
    except Exception:  # alembic's ResolutionError for an unknown id
        return False


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        revision: str | None = await conn.run_sync(
            lambda c: MigrationContext.configure(c).get_current_revision()
        )
        return revision


def run_environment(metadata: MetaData) -> None:
    """The body of every service's ``migrations/env.py``: run the revisions on the connection
    ``upgrade`` handed over, inside its transaction."""
    from alembic import context

    connection = context.config.attributes.get("connection")
    if connection is None:
        raise MigrationError(
            "run migrations with `orderflow migrate <service>` (or at service start-up), "
            "not with the alembic command: they need the service's connection and lock"
        )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # SQLite alters a table by copying it; batch mode writes revisions that work on both.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def missing(table: str) -> bool:
    """In a baseline revision: whether ``table`` still has to be made (``create_all`` may have
    made it before migrations existed)."""
    from alembic import op

    return not inspect(op.get_bind()).has_table(table)


def new_revision(location: Path, message: str) -> Path:
    """Write a new revision for what changed in the models since the newest revision
    (autogenerated against a scratch SQLite database at head; review it before committing)."""
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{Path(scratch) / 'scratch.db'}")
        try:
            with engine.begin() as conn:
                cfg = config_for(location, conn)
                if ScriptDirectory.from_config(cfg).get_current_head() is not None:
                    command.upgrade(cfg, "head")
                number = len(list(ScriptDirectory.from_config(cfg).walk_revisions())) + 1
                script = command.revision(
                    cfg, message=message, autogenerate=True, rev_id=f"{number:04d}"
                )
        finally:
            engine.dispose()
    if script is None or isinstance(script, list):
        raise MigrationError("alembic wrote no single revision")
    return Path(script.path)
