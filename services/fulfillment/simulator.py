"""A warehouse crew for demos: moves shipments along so an order reaches "delivered" unattended.

It acts through the same command function operators use (``handlers.apply_commands``), as actor
"simulator", so a demo exercises the real paths: the same rules, log rows and events. Each tick
it takes the shipments whose last change is older than their own random delay and moves each
one step: pick, pack, ship (carrier SIM-POST), deliver. With ``simulator_failure_rate`` above 0,
that share of deliveries fails instead (the ship-delay exception) and is tried again later, so
every order still ends delivered.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from typing import Any

from sqlalchemy import select

from services.fulfillment import domain, handlers
from services.fulfillment.metrics import FulfillmentMetrics
from services.fulfillment.models import shipments
from services.fulfillment.settings import FulfillmentSettings
from shared.consumer import UnitOfWork
from shared.contracts.fulfillment import DeliveryFailedCommand, ShipCommand, ShipmentCommand
from shared.runtime import ServiceRuntime

log = logging.getLogger(__name__)

ACTOR = "simulator"
CARRIER = "SIM-POST"
FAILURE = "simulated: nobody at home, the carrier will try again"


class WarehouseSimulator:
    def __init__(
        self,
        rt: ServiceRuntime,
        settings: FulfillmentSettings,
        rng: random.Random | None = None,
    ) -> None:
        self.rt = rt
        self.settings = settings
        self.rng = rng or random.Random()
        self.metrics = FulfillmentMetrics.of(rt.metrics)

    async def run(self) -> None:
        log.info(
            "warehouse simulator on: a step every %.1f-%.1f s per shipment, %.0f%% of "
            "deliveries fail",
            self.settings.simulator_min_delay_s,
            self.settings.simulator_max_delay_s,
            100 * self.settings.simulator_failure_rate,
        )
        while True:
            try:
                taken = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("simulator tick failed; trying again")
                taken = 0
            # A full tick means a backlog: go again at once instead of falling further behind.
            await asyncio.sleep(
                0 if taken >= self.settings.simulator_batch else self.settings.simulator_tick_s
            )

    def delay_of(self, shipment_id: str, status: str) -> float:
        """This shipment's wait in this status: random-looking, but the same at every tick (a
        fresh draw per tick would favour the shortest delays)."""
        low, high = self.settings.simulator_min_delay_s, self.settings.simulator_max_delay_s
        fraction = zlib.crc32(f"{shipment_id}:{status}".encode()) / 2**32
        return low + (high - low) * fraction

    async def due(self, now: float) -> list[dict[str, Any]]:
        """The shipments whose wait is over, longest waiting first, at most one batch."""
        limit = self.settings.simulator_batch
        oldest_due = now - min(
            self.settings.simulator_min_delay_s, self.settings.simulator_max_delay_s
        )
        found: list[dict[str, Any]] = []
        async with self.rt.db.reading() as conn:
            # One query per status: each is a range scan of the (status, updated_at) index.
            for status in domain.NEXT_ACTION:
                result = await conn.execute(
                    select(
                        shipments.c.shipment_id,
                        shipments.c.order_id,
                        shipments.c.status,
                        shipments.c.updated_at,
                    )
                    .where(shipments.c.status == status)
                    .where(shipments.c.updated_at <= oldest_due)
                    .order_by(shipments.c.updated_at)
                    .limit(limit)
                )
                found.extend(dict(row) for row in result.mappings())
        ready = [
            s
            for s in found
            if s["updated_at"] <= now - self.delay_of(s["shipment_id"], s["status"])
        ]
        ready.sort(key=lambda s: s["updated_at"])
        return ready[:limit]

    async def tick(self) -> int:
        """Move every due shipment one step; returns how many were due."""
        due = await self.due(time.time())
        if due:
            await self.advance(due)
        return len(due)

    async def advance(self, due: list[dict[str, Any]]) -> int:
        """Move each shipment one step from the status it was seen in; returns how many moved."""
        commands: dict[str, list[ShipmentCommand]] = {}
        for s in due:
            action = domain.NEXT_ACTION[s["status"]]
            if (
                action.name == "deliver"
                and self.rng.random() < self.settings.simulator_failure_rate
            ):
                action = domain.ACTIONS["delivery-failed"]
            commands.setdefault(action.name, []).append(self._command(action, s))

        async def work(uow: UnitOfWork) -> int:
            moved = 0
            for action_name, batch in commands.items():
                outcomes = await handlers.apply_commands(uow, action_name, batch, self.metrics)
                for command, outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, domain.Refusal):
                        # An operator moved it since we looked: fine, it is no longer ours.
                        log.debug(
                            "simulator: %s %s refused: %s",
                            action_name,
                            command.shipment_id,
                            outcome.reason,
                        )
                    else:
                        moved += len(outcome)
            return moved

        moved = await self.rt.execute(work)
        log.debug("simulator: %d of %d due shipments moved", moved, len(due))
        return moved

    def _command(self, action: domain.Action, shipment: dict[str, Any]) -> ShipmentCommand:
        if action.name == "ship":
            return ShipCommand(
                order_id=shipment["order_id"],
                shipment_id=shipment["shipment_id"],
                actor=ACTOR,
                carrier=CARRIER,
                tracking_number=f"SP{self.rng.randrange(10**12):012d}",
            )
        if action.name == "delivery-failed":
            return DeliveryFailedCommand(
                order_id=shipment["order_id"],
                shipment_id=shipment["shipment_id"],
                actor=ACTOR,
                reason=FAILURE,
            )
        return ShipmentCommand(
            order_id=shipment["order_id"], shipment_id=shipment["shipment_id"], actor=ACTOR
        )
