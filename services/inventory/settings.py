"""Inventory's settings: the shared ones plus how long a backorder may wait for stock."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class InventorySettings(ServiceSettings):
    backorder_hold_s: float = Field(
        24 * 3600, gt=0, description="How long a backordered order waits for stock"
    )
    backorder_sweep_s: float = Field(
        1.0, gt=0, description="How often backorders past their deadline are expired"
    )
