"""Alembic environment for intake's database; see shared/migrations.py."""

from services.intake.models import metadata
from shared.migrations import run_environment

run_environment(metadata)
