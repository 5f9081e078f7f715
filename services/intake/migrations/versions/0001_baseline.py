"""baseline: the schema create_all made before migrations

Revision ID: 0001
Revises:
Create Date: 2026-12-02 05:42:12.620882

Tables are created only if missing: a database that create_all made before migrations
existed is adopted as it is.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.migrations import missing

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if missing("customers"):
        op.create_table(
            "customers",
            sa.Column("customer_key", sa.String(length=254), nullable=False),
            sa.Column("tier", sa.String(length=32), nullable=True),
            sa.Column("account_manager", sa.String(length=100), nullable=True),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("customer_key"),
        )
    if missing("inbox"):
        op.create_table(
            "inbox",
            sa.Column("consumer", sa.String(length=64), nullable=False),
            sa.Column("message_id", sa.String(length=80), nullable=False),
            sa.Column("processed_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("consumer", "message_id"),
        )
    if missing("orders"):
        op.create_table(
            "orders",
            sa.Column("order_id", sa.String(length=36), nullable=False),
            sa.Column("channel", sa.String(length=32), nullable=False),
            sa.Column("external_id", sa.String(length=64), nullable=False),
            sa.Column("status", sa.String(length=16), nullable=False),
            sa.Column("status_rank", sa.Integer(), nullable=False),
            sa.Column("priority", sa.String(length=8), nullable=False),
            sa.Column("requested_priority", sa.String(length=8), nullable=True),
            sa.Column("priority_rule", sa.String(length=64), nullable=True),
            sa.Column("owner", sa.String(length=100), nullable=True),
            sa.Column("customer_tier", sa.String(length=32), nullable=True),
            sa.Column("currency", sa.String(length=3), nullable=False),
            sa.Column("total", sa.String(length=20), nullable=False),
            sa.Column("order_doc", sa.LargeBinary(), nullable=False),
            sa.Column("fingerprint", sa.String(length=32), nullable=True),
            sa.Column("suspected_duplicate_of", sa.Text(), nullable=True),
            sa.Column("submitted_at", sa.Float(), nullable=False),
            sa.Column("accepted_at", sa.Float(), nullable=True),
            sa.Column("backordered_at", sa.Float(), nullable=True),
            sa.Column("reserved_at", sa.Float(), nullable=True),
            sa.Column("queued_at", sa.Float(), nullable=True),
            sa.Column("picked_at", sa.Float(), nullable=True),
            sa.Column("packed_at", sa.Float(), nullable=True),
            sa.Column("shipped_at", sa.Float(), nullable=True),
            sa.Column("delivered_at", sa.Float(), nullable=True),
            sa.Column("cancel_requested_at", sa.Float(), nullable=True),
            sa.Column("cancel_actor", sa.String(length=100), nullable=True),
            sa.Column("cancel_reason", sa.String(length=500), nullable=True),
            sa.Column("cancel_refused_at", sa.Float(), nullable=True),
            sa.Column("cancel_refused_reason", sa.String(length=500), nullable=True),
            sa.Column("cancelled_at", sa.Float(), nullable=True),
            sa.Column("cancelled_reason", sa.String(length=500), nullable=True),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("order_id"),
            sa.UniqueConstraint("channel", "external_id", name="uq_orders_channel_external_id"),
        )
        with op.batch_alter_table("orders", schema=None) as batch_op:
            batch_op.create_index(
                "ix_orders_fingerprint", ["fingerprint", "submitted_at"], unique=False
            )
            batch_op.create_index("ix_orders_status", ["status"], unique=False)
    if missing("outbox"):
        op.create_table(
            "outbox",
            sa.Column("event_id", sa.String(length=36), nullable=False),
            sa.Column("subject", sa.String(length=255), nullable=False),
            sa.Column("payload", sa.LargeBinary(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("published_at", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("event_id"),
        )
        with op.batch_alter_table("outbox", schema=None) as batch_op:
            batch_op.create_index(
                "ix_outbox_unpublished",
                ["created_at"],
                unique=False,
                sqlite_where=sa.text("published_at IS NULL"),
                postgresql_where=sa.text("published_at IS NULL"),
            )
    if missing("rejections"):
        op.create_table(
            "rejections",
            sa.Column("order_id", sa.String(length=36), nullable=False),
            sa.Column("channel", sa.String(length=32), nullable=False),
            sa.Column("external_id", sa.String(length=64), nullable=True),
            sa.Column("errors", sa.LargeBinary(), nullable=False),
            sa.Column("raw", sa.LargeBinary(), nullable=False),
            sa.Column("submitted_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("order_id"),
        )


def downgrade() -> None:
    op.drop_table("rejections")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_outbox_unpublished",
            sqlite_where=sa.text("published_at IS NULL"),
            postgresql_where=sa.text("published_at IS NULL"),
        )

    op.drop_table("outbox")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_status")
        batch_op.drop_index("ix_orders_fingerprint")

    op.drop_table("orders")
    op.drop_table("inbox")
    op.drop_table("customers")
