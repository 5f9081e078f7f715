"""Inventory's tables: warehouses, stock levels, reservations, backorders, the stock ledger,
per-SKU reorder settings and cancelled orders."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

from shared.db import serial_id
from shared.inbox import inbox_table
from shared.outbox import outbox_table

metadata = MetaData()
# Its versioned changes (Alembic), applied at start-up: shared/migrations.py.
MIGRATIONS = Path(__file__).with_name("migrations")

warehouses = Table(
    "warehouses",
    metadata,
    Column("code", String(16), primary_key=True),
    # Lower is preferred: an order is served by the best-ranked warehouse that has all of it.
    Column("rank", Integer, nullable=False),
    # Orders shipping to this country try it before the others (nearest first).
    Column("country", String(2)),
    Column("created_at", Float, nullable=False),
    # Who created or last changed it (an operator); null for rows from before revision 0002.
    Column("updated_by", String(64)),
)

# available = on_hand - reserved. ``shipped`` counts units that left and ``returned`` units that
# came back, so that restocked + adjusted + returned = on_hand + shipped (per SKU; transfers
# cancel out) and a lost unit shows up; the ledger has every movement. The checks make a bug that would
# oversell fail its transaction (and be retried, then dead-lettered) instead of committing.
stock = Table(
    "stock",
    metadata,
    Column("sku", String(32), primary_key=True),
    Column("warehouse", String(16), primary_key=True),
    Column("on_hand", Integer, nullable=False),
    Column("reserved", Integer, nullable=False),
    Column("shipped", Integer, nullable=False),
    Column("returned", Integer, nullable=False, default=0, server_default="0"),
    CheckConstraint("reserved >= 0", name="ck_stock_reserved_not_negative"),
    CheckConstraint("on_hand >= reserved", name="ck_stock_not_oversold"),
    CheckConstraint("shipped >= 0", name="ck_stock_shipped_not_negative"),
    CheckConstraint("returned >= 0", name="ck_stock_returned_not_negative"),
)

reservations = Table(
    "reservations",
    metadata,
    Column("order_id", String(36), primary_key=True),
    Column("sku", String(32), primary_key=True),
    Column("warehouse", String(16), primary_key=True),
    Column("quantity", Integer, nullable=False),
    Column("status", String(10), nullable=False),  # reserved | shipped | released
    Column("created_at", Float, nullable=False),
    # Units of a shipped reservation that came back (a return never exceeds what shipped).
    Column("returned", Integer, nullable=False, default=0, server_default="0"),
    CheckConstraint("quantity > 0", name="ck_reservations_quantity_positive"),
    CheckConstraint("returned >= 0 AND returned <= quantity", name="ck_reservations_returned"),
)

backorders = Table(
    "backorders",
    metadata,
    Column("order_id", String(36), primary_key=True),
    # The OrderAccepted payload (JSON): enough to reserve the order when stock arrives.
    Column("order_doc", LargeBinary, nullable=False),
    Column("priority", String(8), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("submitted_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("deadline", Float, nullable=False),
    Column("status", String(10), nullable=False),  # waiting | reserved | expired | cancelled
    Index("ix_backorders_status_deadline", "status", "deadline"),
)

# Which SKUs a backorder waits for, so a restock finds the orders it may serve with an index;
# the quantities are demand the ledger does not show until the order is reserved.
backorder_skus = Table(
    "backorder_skus",
    metadata,
    Column("order_id", String(36), primary_key=True),
    Column("sku", String(32), primary_key=True),
    Column("quantity", Integer, nullable=False, default=0, server_default="0"),
    Index("ix_backorder_skus_sku", "sku"),
)

ledger = Table(
    "ledger",
    metadata,
    serial_id(),
    Column("sku", String(32), nullable=False),
    Column("warehouse", String(16), nullable=False),
    Column("delta_on_hand", Integer, nullable=False),
    Column("delta_reserved", Integer, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("ref", String(36)),  # the order id, when an order caused it
    Column("actor", String(64), nullable=False),
    Column("at", Float, nullable=False),
    # Days since the epoch (UTC), so daily demand is a GROUP BY on every database.
    Column("day", Integer, nullable=False),
    Index("ix_ledger_sku_id", "sku", "id"),
)

# Per SKU: when it counts as low on stock, what a reorder assumes, and whether it is low now
# (so LowStock is sent once per crossing, and the below-reorder gauge is one count).
sku_settings = Table(
    "sku_settings",
    metadata,
    Column("sku", String(32), primary_key=True),
    Column("reorder_point", Integer),
    Column("lead_time_days", Float),
    Column("target_cover_days", Float),
    Column("below_reorder", Boolean, nullable=False, default=False),
    Column("updated_at", Float, nullable=False),
    Column("updated_by", String(64), nullable=False),
    Index("ix_sku_settings_below", "below_reorder"),
)

# Orders fulfillment cancelled. An OrderAccepted that arrives after its cancellation (they come
# on different streams) is not reserved; the recent ones are checked by a sweep, because two
# replicas may handle an order's acceptance and cancellation at the same moment.
cancellations = Table(
    "cancellations",
    metadata,
    Column("order_id", String(36), primary_key=True),
    Column("reason", String(500), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_cancellations_at", "at"),
)

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
