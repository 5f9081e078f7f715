"""baseline: the schema create_all made before migrations

Revision ID: 0001
Revises:
Create Date: 2026-12-02 05:42:12.646919

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
    if missing("backorder_skus"):
        op.create_table(
            "backorder_skus",
            sa.Column("order_id", sa.String(length=36), nullable=False),
            sa.Column("sku", sa.String(length=32), nullable=False),
            sa.Column("quantity", sa.Integer(), server_default="0", nullable=False),
            sa.PrimaryKeyConstraint("order_id", "sku"),
        )
        with op.batch_alter_table("backorder_skus", schema=None) as batch_op:
            batch_op.create_index("ix_backorder_skus_sku", ["sku"], unique=False)
    if missing("backorders"):
        op.create_table(
            "backorders",
            sa.Column("order_id", sa.String(length=36), nullable=False),
            sa.Column("order_doc", sa.LargeBinary(), nullable=False),
            sa.Column("priority", sa.String(length=8), nullable=False),
            sa.Column("channel", sa.String(length=32), nullable=False),
            sa.Column("submitted_at", sa.Float(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("deadline", sa.Float(), nullable=False),
            sa.Column("status", sa.String(length=10), nullable=False),
            sa.PrimaryKeyConstraint("order_id"),
        )
        with op.batch_alter_table("backorders", schema=None) as batch_op:
            batch_op.create_index(
                "ix_backorders_status_deadline", ["status", "deadline"], unique=False
            )
    if missing("cancellations"):
        op.create_table(
            "cancellations",
            sa.Column("order_id", sa.String(length=36), nullable=False),
            sa.Column("reason", sa.String(length=500), nullable=False),
            sa.Column("actor", sa.String(length=64), nullable=False),
            sa.Column("at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("order_id"),
        )
        with op.batch_alter_table("cancellations", schema=None) as batch_op:
            batch_op.create_index("ix_cancellations_at", ["at"], unique=False)
    if missing("inbox"):
        op.create_table(
            "inbox",
            sa.Column("consumer", sa.String(length=64), nullable=False),
            sa.Column("message_id", sa.String(length=80), nullable=False),
            sa.Column("processed_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("consumer", "message_id"),
        )
    if missing("ledger"):
        op.create_table(
            "ledger",
            sa.Column(
                "id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                autoincrement=True,
                nullable=False,
            ),
            sa.Column("sku", sa.String(length=32), nullable=False),
            sa.Column("warehouse", sa.String(length=16), nullable=False),
            sa.Column("delta_on_hand", sa.Integer(), nullable=False),
            sa.Column("delta_reserved", sa.Integer(), nullable=False),
            sa.Column("reason", sa.String(length=64), nullable=False),
            sa.Column("ref", sa.String(length=36), nullable=True),
            sa.Column("actor", sa.String(length=64), nullable=False),
            sa.Column("at", sa.Float(), nullable=False),
            sa.Column("day", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        with op.batch_alter_table("ledger", schema=None) as batch_op:
            batch_op.create_index("ix_ledger_sku_id", ["sku", "id"], unique=False)
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
    if missing("reservations"):
        op.create_table(
            "reservations",
            sa.Column("order_id", sa.String(length=36), nullable=False),
            sa.Column("sku", sa.String(length=32), nullable=False),
            sa.Column("warehouse", sa.String(length=16), nullable=False),
            sa.Column("quantity", sa.Integer(), nullable=False),
            sa.Column("status", sa.String(length=10), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("returned", sa.Integer(), server_default="0", nullable=False),
            sa.CheckConstraint("quantity > 0", name="ck_reservations_quantity_positive"),
            sa.CheckConstraint(
                "returned >= 0 AND returned <= quantity", name="ck_reservations_returned"
            ),
            sa.PrimaryKeyConstraint("order_id", "sku", "warehouse"),
        )
    if missing("sku_settings"):
        op.create_table(
            "sku_settings",
            sa.Column("sku", sa.String(length=32), nullable=False),
            sa.Column("reorder_point", sa.Integer(), nullable=True),
            sa.Column("lead_time_days", sa.Float(), nullable=True),
            sa.Column("target_cover_days", sa.Float(), nullable=True),
            sa.Column("below_reorder", sa.Boolean(), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.Column("updated_by", sa.String(length=64), nullable=False),
            sa.PrimaryKeyConstraint("sku"),
        )
        with op.batch_alter_table("sku_settings", schema=None) as batch_op:
            batch_op.create_index("ix_sku_settings_below", ["below_reorder"], unique=False)
    if missing("stock"):
        op.create_table(
            "stock",
            sa.Column("sku", sa.String(length=32), nullable=False),
            sa.Column("warehouse", sa.String(length=16), nullable=False),
            sa.Column("on_hand", sa.Integer(), nullable=False),
            sa.Column("reserved", sa.Integer(), nullable=False),
            sa.Column("shipped", sa.Integer(), nullable=False),
            sa.Column("returned", sa.Integer(), server_default="0", nullable=False),
            sa.CheckConstraint("on_hand >= reserved", name="ck_stock_not_oversold"),
            sa.CheckConstraint("reserved >= 0", name="ck_stock_reserved_not_negative"),
            sa.CheckConstraint("returned >= 0", name="ck_stock_returned_not_negative"),
            sa.CheckConstraint("shipped >= 0", name="ck_stock_shipped_not_negative"),
            sa.PrimaryKeyConstraint("sku", "warehouse"),
        )
    if missing("warehouses"):
        op.create_table(
            "warehouses",
            sa.Column("code", sa.String(length=16), nullable=False),
            sa.Column("rank", sa.Integer(), nullable=False),
            sa.Column("country", sa.String(length=2), nullable=True),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("code"),
        )


def downgrade() -> None:
    op.drop_table("warehouses")
    op.drop_table("stock")
    with op.batch_alter_table("sku_settings", schema=None) as batch_op:
        batch_op.drop_index("ix_sku_settings_below")

    op.drop_table("sku_settings")
    op.drop_table("reservations")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_outbox_unpublished",
            sqlite_where=sa.text("published_at IS NULL"),
            postgresql_where=sa.text("published_at IS NULL"),
        )

    op.drop_table("outbox")
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_sku_id")

    op.drop_table("ledger")
    op.drop_table("inbox")
    with op.batch_alter_table("cancellations", schema=None) as batch_op:
        batch_op.drop_index("ix_cancellations_at")

    op.drop_table("cancellations")
    with op.batch_alter_table("backorders", schema=None) as batch_op:
        batch_op.drop_index("ix_backorders_status_deadline")

    op.drop_table("backorders")
    with op.batch_alter_table("backorder_skus", schema=None) as batch_op:
        batch_op.drop_index("ix_backorder_skus_sku")

    op.drop_table("backorder_skus")
