"""Alembic environment for fulfillment's database; see shared/migrations.py."""

from services.fulfillment.models import metadata
from shared.migrations import run_environment

run_environment(metadata)
