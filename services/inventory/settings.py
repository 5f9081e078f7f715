"""Inventory's settings: the shared ones plus reservation, backorder and forecast rules
(environment prefix ``ORDERFLOW_``, like every service)."""

from __future__ import annotations

from pydantic import Field

from services.inventory.domain import Policy
from shared.settings import ServiceSettings


class InventorySettings(ServiceSettings):
    allow_split: bool = Field(
        True,
        description=(
            "Split an order across warehouses when no single one has all of it (OrderAccepted "
            "has no per-order choice, so this holds for every order)"
        ),
    )
    backorder_hold_s: float = Field(
        24 * 3600, gt=0, description="How long a backordered order waits for stock"
    )
    backorder_sweep_s: float = Field(
        1.0,
        gt=0,
        description="How often backorders past their deadline are expired (and cancellations "
        "that raced a reservation are released)",
    )
    cancel_race_window_s: float = Field(
        600.0, gt=0, description="How far back the sweep looks for cancellations"
    )
    gauge_refresh_s: float = Field(
        5.0, gt=0, description="How often the backlog and low-stock gauges are counted"
    )
    forecast_alpha: float = Field(
        0.3, gt=0, le=1, description="Exponential smoothing weight of the latest day's demand"
    )
    forecast_window_days: int = Field(
        56, ge=1, le=3650, description="Days of demand history a forecast looks at"
    )
    lead_time_days: float = Field(
        7.0, gt=0, description="Default days a reorder takes to arrive (per SKU: a command)"
    )
    target_cover_days: float = Field(
        14.0, gt=0, description="Default days of demand a reorder should cover after arrival"
    )

    def policy(self) -> Policy:
        return Policy(
            allow_split=self.allow_split,
            backorder_hold_s=self.backorder_hold_s,
            forecast_alpha=self.forecast_alpha,
            forecast_window_days=self.forecast_window_days,
            lead_time_days=self.lead_time_days,
            target_cover_days=self.target_cover_days,
        )
