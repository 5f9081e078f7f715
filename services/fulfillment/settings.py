"""Fulfillment's own settings (environment prefix ``ORDERFLOW_``, like every service)."""

from __future__ import annotations

from pydantic import Field

from services.fulfillment.domain import SlaPolicy
from shared.settings import ServiceSettings


class FulfillmentSettings(ServiceSettings):
    sla_urgent_hours: float = Field(2.0, gt=0, description="Queued to shipped, urgent orders")
    sla_high_hours: float = Field(8.0, gt=0, description="Queued to shipped, high priority")
    sla_normal_hours: float = Field(24.0, gt=0, description="Queued to shipped, normal priority")
    sla_low_hours: float = Field(72.0, gt=0, description="Queued to shipped, low priority")
    sla_escalation_factor: float = Field(
        2.0,
        gt=1,
        description="A shipment not shipped after this many times its SLA is escalated",
    )
    sla_check_s: float = Field(5.0, gt=0, description="How often the SLA job looks")
    sla_batch: int = Field(
        500, ge=1, le=5000, description="Most shipments the SLA job flags in one transaction"
    )

    simulator_tick_s: float = Field(0.2, gt=0, description="How often the simulator looks")
    simulator_batch: int = Field(
        200, ge=1, le=5000, description="Most shipments the simulator advances in one tick"
    )
    simulator_failure_rate: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of simulated deliveries that fail (each is retried until delivered)",
    )

    def sla_hours(self) -> dict[str, float]:
        return {
            "urgent": self.sla_urgent_hours,
            "high": self.sla_high_hours,
            "normal": self.sla_normal_hours,
            "low": self.sla_low_hours,
        }

    def sla_policy(self) -> SlaPolicy:
        return SlaPolicy(self.sla_hours(), self.sla_escalation_factor)
