"""``orderflow migrate <service>``: bring a service's database to its newest schema revision
(services also do it at start-up), or write a new revision after a change to its models."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from orderflow.commands import run_async
from shared import migrations, subjects
from shared.db import Database
from shared.rpc import CommandRefused
from shared.runtime import StartupError
from shared.settings import ServiceSettings


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "migrate",
        help="migrate a service's database to its newest schema (also done at start-up)",
    )
    parser.add_argument("service", choices=subjects.SERVICES)
    parser.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy async URL (default: ORDERFLOW_DATABASE_URL, else the service's SQLite "
        "file under $ORDERFLOW_HOME)",
    )
    parser.add_argument("--to", default="head", help="target revision (default: the newest)")
    parser.add_argument(
        "--show", action="store_true", help="print the database's revision and the newest, only"
    )
    parser.add_argument(
        "--new",
        metavar="MESSAGE",
        default=None,
        help="for developers: write a new revision for what changed in the service's models",
    )
    parser.set_defaults(func=cmd_migrate)


def schema_of(service: str) -> tuple[Path, Any]:
    models = importlib.import_module(f"services.{service}.models")
    return models.MIGRATIONS, models.metadata


def cmd_migrate(args: argparse.Namespace) -> int:
    location, metadata = schema_of(args.service)
    if args.new:
        path = migrations.new_revision(location, args.new)
        print(f"wrote {path}; review it (keep changes additive) before committing")
        return 0
    url = args.database_url or ServiceSettings().database_url_for(args.service)

    async def go() -> int:
        db = Database(url, metadata)
        try:
            if args.show:
                current = await migrations.current_revision(db)
                head = migrations.head_of(location)
                print(f"{args.service}: database at {current or 'no revision'}, newest {head}")
                return 0
            result = await migrations.upgrade(db, args.service, location, args.to)
        except migrations.MigrationError as exc:
            raise CommandRefused(str(exc)) from exc
        except Exception as exc:
            raise StartupError(f"cannot open the database {db.url!r}: {exc}") from exc
        finally:
            await db.close()
        print(result.describe())
        return 0

    return run_async(go())
