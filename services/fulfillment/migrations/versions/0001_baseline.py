"""baseline: the schema create_all made before migrations

Revision ID: 0001
Revises:
Create Date: 2026-12-02 05:42:12.701100

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
            sa.Column("order_id", sa.String(length=64), nullable=False),
            sa.Column("status", sa.String(length=16), nullable=False),
            sa.Column("currency", sa.String(length=3), nullable=True),
            sa.Column("unit_prices", sa.LargeBinary(), nullable=True),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("cancelled_at", sa.Float(), nullable=True),
            sa.Column("cancelled_by", sa.String(length=64), nullable=True),
            sa.Column("cancel_reason", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("order_id"),
        )
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
    if missing("returns"):
        op.create_table(
            "returns",
            sa.Column("return_id", sa.String(length=36), nullable=False),
            sa.Column("order_id", sa.String(length=64), nullable=False),
            sa.Column("shipment_id", sa.String(length=36), nullable=False),
            sa.Column("warehouse", sa.String(length=32), nullable=False),
            sa.Column("lines", sa.LargeBinary(), nullable=False),
            sa.Column("status", sa.String(length=16), nullable=False),
            sa.Column("reason", sa.Text(), nullable=False),
            sa.Column("requested_at", sa.Float(), nullable=False),
            sa.Column("requested_by", sa.String(length=64), nullable=False),
            sa.Column("received_at", sa.Float(), nullable=True),
            sa.Column("received_by", sa.String(length=64), nullable=True),
            sa.Column("refund_amount", sa.String(length=16), nullable=True),
            sa.Column("currency", sa.String(length=3), nullable=True),
            sa.Column("refund_note", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("return_id"),
        )
        with op.batch_alter_table("returns", schema=None) as batch_op:
            batch_op.create_index("ix_returns_order", ["order_id"], unique=False)
    if missing("shipment_log"):
        op.create_table(
            "shipment_log",
            sa.Column(
                "id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                autoincrement=True,
                nullable=False,
            ),
            sa.Column("shipment_id", sa.String(length=36), nullable=False),
            sa.Column("order_id", sa.String(length=64), nullable=False),
            sa.Column("action", sa.String(length=24), nullable=False),
            sa.Column("actor", sa.String(length=64), nullable=False),
            sa.Column("at", sa.Float(), nullable=False),
            sa.Column("detail", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        )
        with op.batch_alter_table("shipment_log", schema=None) as batch_op:
            batch_op.create_index("ix_shipment_log_order", ["order_id", "id"], unique=False)
    if missing("shipments"):
        op.create_table(
            "shipments",
            sa.Column("shipment_id", sa.String(length=36), nullable=False),
            sa.Column("order_id", sa.String(length=64), nullable=False),
            sa.Column("warehouse", sa.String(length=32), nullable=False),
            sa.Column("priority", sa.String(length=8), nullable=False),
            sa.Column("priority_rank", sa.Integer(), nullable=False),
            sa.Column("status", sa.String(length=16), nullable=False),
            sa.Column("lines", sa.LargeBinary(), nullable=False),
            sa.Column("ship_to", sa.LargeBinary(), nullable=False),
            sa.Column("channel", sa.String(length=32), nullable=False),
            sa.Column("submitted_at", sa.Float(), nullable=False),
            sa.Column("queued_at", sa.Float(), nullable=False),
            sa.Column("sla_deadline", sa.Float(), nullable=False),
            sa.Column("escalation_deadline", sa.Float(), nullable=False),
            sa.Column("overdue_at", sa.Float(), nullable=True),
            sa.Column("escalated_at", sa.Float(), nullable=True),
            sa.Column("picked_at", sa.Float(), nullable=True),
            sa.Column("packed_at", sa.Float(), nullable=True),
            sa.Column("shipped_at", sa.Float(), nullable=True),
            sa.Column("delivered_at", sa.Float(), nullable=True),
            sa.Column("delivery_failed_at", sa.Float(), nullable=True),
            sa.Column("cancelled_at", sa.Float(), nullable=True),
            sa.Column("failed_deliveries", sa.Integer(), nullable=False),
            sa.Column("carrier", sa.String(length=64), nullable=True),
            sa.Column("tracking_number", sa.String(length=64), nullable=True),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.Column("updated_by", sa.String(length=64), nullable=False),
            sa.PrimaryKeyConstraint("shipment_id"),
            sa.UniqueConstraint("order_id", "warehouse", name="uq_shipments_order_warehouse"),
        )
        with op.batch_alter_table("shipments", schema=None) as batch_op:
            batch_op.create_index(
                "ix_shipments_status_updated", ["status", "updated_at"], unique=False
            )
            batch_op.create_index(
                "ix_shipments_work_queue",
                ["status", "priority_rank", "sla_deadline", "queued_at"],
                unique=False,
            )


def downgrade() -> None:
    with op.batch_alter_table("shipments", schema=None) as batch_op:
        batch_op.drop_index("ix_shipments_work_queue")
        batch_op.drop_index("ix_shipments_status_updated")

    op.drop_table("shipments")
    with op.batch_alter_table("shipment_log", schema=None) as batch_op:
        batch_op.drop_index("ix_shipment_log_order")

    op.drop_table("shipment_log")
    with op.batch_alter_table("returns", schema=None) as batch_op:
        batch_op.drop_index("ix_returns_order")

    op.drop_table("returns")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_outbox_unpublished",
            sqlite_where=sa.text("published_at IS NULL"),
            postgresql_where=sa.text("published_at IS NULL"),
        )

    op.drop_table("outbox")
    op.drop_table("orders")
    op.drop_table("inbox")
