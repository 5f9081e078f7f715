"""Notify's own settings, on top of what every service reads (env prefix ``ORDERFLOW_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings import ServiceSettings


class NotifySettings(ServiceSettings):
    notify_resend_after_s: float = Field(
        30.0,
        gt=0,
        description="A notification still pending this long after its commit (the sink failed "
        "or the process died before handing it over) is handed to the sink again",
    )
    notify_resend_interval_s: float = Field(
        5.0, gt=0, description="How often to look for such notifications"
    )

    @property
    def notification_log(self) -> Path:
        return self.home / "notifications.log"
