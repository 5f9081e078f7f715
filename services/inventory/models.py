"""Inventory's tables: warehouses, stock levels, reservations, backorders and the stock ledger."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
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

from shared.inbox import inbox_table
from shared.outbox import outbox_table

metadata = MetaData()

warehouses = Table(
    "warehouses",
    metadata,
    Column("code", String(16), primary_key=True),
    # Lower is preferred: an order is served by the best-ranked warehouse that has all of it.
    Column("rank", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

# available = on_hand - reserved. ``shipped`` counts units that left, so that everything ever
# received equals on_hand + shipped and a lost unit shows up. The checks make a bug that would
# oversell fail its transaction (and be retried, then dead-lettered) instead of committing.
stock = Table(
    "stock",
    metadata,
    Column("sku", String(32), primary_key=True),
    Column("warehouse", String(16), primary_key=True),
    Column("on_hand", Integer, nullable=False),
    Column("reserved", Integer, nullable=False),
    Column("shipped", Integer, nullable=False),
    CheckConstraint("reserved >= 0", name="ck_stock_reserved_not_negative"),
    CheckConstraint("on_hand >= reserved", name="ck_stock_not_oversold"),
    CheckConstraint("shipped >= 0", name="ck_stock_shipped_not_negative"),
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
    CheckConstraint("quantity > 0", name="ck_reservations_quantity_positive"),
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
    Column("status", String(10), nullable=False),  # waiting | reserved | expired
    Index("ix_backorders_status_deadline", "status", "deadline"),
)

# Which SKUs a backorder waits for, so a restock finds the orders it may serve with an index.
backorder_skus = Table(
    "backorder_skus",
    metadata,
    Column("order_id", String(36), primary_key=True),
    Column("sku", String(32), primary_key=True),
    Index("ix_backorder_skus_sku", "sku"),
)

ledger = Table(
    "ledger",
    metadata,
    # SQLite only autoincrements an INTEGER PRIMARY KEY.
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("sku", String(32), nullable=False),
    Column("warehouse", String(16), nullable=False),
    Column("delta_on_hand", Integer, nullable=False),
    Column("delta_reserved", Integer, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("ref", String(36)),  # the order id, when an order caused it
    Column("actor", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_ledger_sku_id", "sku", "id"),
)

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
