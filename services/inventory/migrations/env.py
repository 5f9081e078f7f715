"""Alembic environment for inventory's database; see shared/migrations.py."""

from services.inventory.models import metadata
from shared.migrations import run_environment

run_environment(metadata)
