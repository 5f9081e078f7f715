"""Alembic environment for notify's database; see shared/migrations.py."""

from services.notify.models import metadata
from shared.migrations import run_environment

run_environment(metadata)
