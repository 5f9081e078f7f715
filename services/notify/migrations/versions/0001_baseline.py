"""baseline: the schema create_all made before migrations

Revision ID: 0001
Revises:
Create Date: 2026-12-02 05:42:12.721811

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
    if missing("alerts"):
        op.create_table(
            "alerts",
            sa.Column("alert_key", sa.String(length=128), nullable=False),
            sa.Column("raised_at", sa.Float(), nullable=False),
            sa.Column("source_event_id", sa.String(length=36), nullable=False),
            sa.PrimaryKeyConstraint("alert_key"),
        )
    if missing("deliveries"):
        op.create_table(
            "deliveries",
            sa.Column("delivery_id", sa.String(length=36), nullable=False),
            sa.Column("notification_id", sa.String(length=36), nullable=False),
            sa.Column("sink", sa.String(length=32), nullable=False),
            sa.Column("address", sa.String(length=254), nullable=False),
            sa.Column("status", sa.String(length=16), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("attempt_limit", sa.Integer(), nullable=False),
            sa.Column("next_attempt_at", sa.Float(), nullable=False),
            sa.Column("claimed_by", sa.String(length=64), nullable=True),
            sa.Column("claim_expires_at", sa.Float(), nullable=True),
            sa.Column("last_error", sa.String(length=1000), nullable=True),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("sent_at", sa.Float(), nullable=True),
            sa.Column("failed_at", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("delivery_id"),
            sa.UniqueConstraint("notification_id", "sink", name="uq_deliveries_once"),
        )
        with op.batch_alter_table("deliveries", schema=None) as batch_op:
            batch_op.create_index(
                "ix_deliveries_due", ["sink", "status", "next_attempt_at"], unique=False
            )
            batch_op.create_index("ix_deliveries_notification", ["notification_id"], unique=False)
            batch_op.create_index("ix_deliveries_status", ["status", "failed_at"], unique=False)
    if missing("delivery_attempts"):
        op.create_table(
            "delivery_attempts",
            sa.Column("delivery_id", sa.String(length=36), nullable=False),
            sa.Column("attempt", sa.Integer(), nullable=False),
            sa.Column("claimed_by", sa.String(length=64), nullable=False),
            sa.Column("started_at", sa.Float(), nullable=False),
            sa.Column("duration_s", sa.Float(), nullable=False),
            sa.Column("result", sa.String(length=16), nullable=False),
            sa.Column("status_code", sa.Integer(), nullable=True),
            sa.Column("error", sa.String(length=1000), nullable=True),
            sa.PrimaryKeyConstraint("delivery_id", "attempt"),
        )
    if missing("inbox"):
        op.create_table(
            "inbox",
            sa.Column("consumer", sa.String(length=64), nullable=False),
            sa.Column("message_id", sa.String(length=80), nullable=False),
            sa.Column("processed_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("consumer", "message_id"),
        )
    if missing("notifications"):
        op.create_table(
            "notifications",
            sa.Column("notification_id", sa.String(length=36), nullable=False),
            sa.Column("source_event_id", sa.String(length=36), nullable=False),
            sa.Column("order_id", sa.String(length=64), nullable=True),
            sa.Column("template", sa.String(length=32), nullable=False),
            sa.Column("audience", sa.String(length=16), nullable=False),
            sa.Column("locale", sa.String(length=8), nullable=False),
            sa.Column("recipient", sa.String(length=254), nullable=False),
            sa.Column("subject", sa.String(length=300), nullable=False),
            sa.Column("body", sa.Text(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("notification_id"),
            sa.UniqueConstraint("source_event_id", "recipient", name="uq_notifications_once"),
        )
        with op.batch_alter_table("notifications", schema=None) as batch_op:
            batch_op.create_index("ix_notifications_order", ["order_id"], unique=False)
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
    if missing("recipients"):
        op.create_table(
            "recipients",
            sa.Column("order_id", sa.String(length=36), nullable=False),
            sa.Column("external_id", sa.String(length=64), nullable=False),
            sa.Column("name", sa.String(length=200), nullable=False),
            sa.Column("email", sa.String(length=254), nullable=True),
            sa.Column("phone", sa.String(length=32), nullable=True),
            sa.Column("locale", sa.String(length=8), nullable=False),
            sa.Column("channel", sa.String(length=32), nullable=False),
            sa.Column("priority", sa.String(length=8), nullable=False),
            sa.Column("submitted_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("order_id"),
        )
    if missing("rejections"):
        op.create_table(
            "rejections",
            sa.Column("source_event_id", sa.String(length=36), nullable=False),
            sa.Column("channel", sa.String(length=32), nullable=False),
            sa.Column("submitted_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("source_event_id"),
        )
        with op.batch_alter_table("rejections", schema=None) as batch_op:
            batch_op.create_index(
                "ix_rejections_channel", ["channel", "submitted_at"], unique=False
            )


def downgrade() -> None:
    with op.batch_alter_table("rejections", schema=None) as batch_op:
        batch_op.drop_index("ix_rejections_channel")

    op.drop_table("rejections")
    op.drop_table("recipients")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_outbox_unpublished",
            sqlite_where=sa.text("published_at IS NULL"),
            postgresql_where=sa.text("published_at IS NULL"),
        )

    op.drop_table("outbox")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_order")

    op.drop_table("notifications")
    op.drop_table("inbox")
    op.drop_table("delivery_attempts")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_status")
        batch_op.drop_index("ix_deliveries_notification")
        batch_op.drop_index("ix_deliveries_due")

    op.drop_table("deliveries")
    op.drop_table("alerts")
