"""Notify's own settings, on top of what every service reads (env prefix ``ORDERFLOW_``).

Which sinks get which messages is configuration. The simplest case needs two variables:
``ORDERFLOW_NOTIFY_WEBHOOK_URL`` and ``ORDERFLOW_NOTIFY_WEBHOOK_SECRET`` send every customer
message to one webhook. More webhooks (each with its own secret) come as a JSON list in
``ORDERFLOW_NOTIFY_WEBHOOKS``; e-mail needs ``ORDERFLOW_NOTIFY_SMTP_HOST``. The log file sink
takes everything unless ``ORDERFLOW_NOTIFY_LOG_EVENTS=none``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from services.notify import domain
from shared.settings import ServiceSettings

SELECTOR_HELP = (
    "Which messages: all, none, or a comma list of customer, operations and template names"
)
RESERVED_SINK_NAMES = {"log", "webhook", "email"}


def _selector(value: str) -> str:
    domain.parse_selector(value)
    return value


class WebhookEndpoint(BaseModel):
    """One more webhook, with its own secret and its own share of the messages."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="The sink's name")
    url: str = Field(pattern=r"^https?://", description="Where to POST")
    secret: SecretStr = Field(description="HMAC-SHA256 key for the signature header")
    events: str = Field(domain.OPERATIONS, description=SELECTOR_HELP)
    timeout_s: float = Field(10.0, gt=0, le=300)

    _events = field_validator("events")(_selector)

    @field_validator("secret")
    @classmethod
    def _strong_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("a webhook secret needs at least 16 characters")
        return value


class NotifySettings(ServiceSettings):
    notify_log_events: str = Field(domain.ALL, description=SELECTOR_HELP)

    notify_webhook_url: str | None = Field(
        None, pattern=r"^https?://", description="The webhook every customer message goes to"
    )
    notify_webhook_secret: SecretStr | None = Field(
        None, description="Its HMAC-SHA256 signing secret (required with the URL)"
    )
    notify_webhook_events: str = Field(domain.CUSTOMER, description=SELECTOR_HELP)
    notify_webhook_timeout_s: float = Field(10.0, gt=0, le=300)
    notify_webhooks: list[WebhookEndpoint] = Field(
        default_factory=list, description="More webhooks, as a JSON list"
    )

    notify_smtp_host: str | None = Field(None, description="SMTP server; unset: no e-mail sink")
    notify_smtp_port: int = Field(25, ge=1, le=65535)
    notify_smtp_sender: str = Field("orderflow@localhost", description="From: address")
    notify_smtp_username: str | None = None
    notify_smtp_password: SecretStr | None = None
    notify_smtp_starttls: bool = Field(False, description="Upgrade the connection with STARTTLS")
    notify_smtp_timeout_s: float = Field(10.0, gt=0, le=300)
    notify_smtp_events: str = Field(domain.ALL, description=SELECTOR_HELP)

    notify_operations_email: str | None = Field(
        None, description="Where the e-mail sink sends operations alerts (unset: it sends none)"
    )
    notify_operations_locale: str = Field(domain.DEFAULT_LOCALE, pattern=r"^[a-z]{2}(-[A-Z]{2})?$")

    notify_max_attempts: int = Field(
        10, ge=1, le=100, description="Attempts per delivery before it is given up (and alerted)"
    )
    notify_retry_base_s: float = Field(2.0, gt=0, description="First retry delay; doubles")
    notify_retry_max_s: float = Field(600.0, gt=0, description="Longest retry delay")
    notify_retry_jitter: float = Field(0.2, ge=0, le=1, description="Spread of each delay, +/-")
    notify_claim_lease_s: float = Field(
        60.0,
        gt=0,
        description="A claimed delivery whose worker has not finished by then (it died) is "
        "claimed again by another",
    )
    notify_delivery_batch: int = Field(100, ge=1, le=1000, description="Deliveries per claim")
    notify_delivery_queue: int = Field(
        2000,
        ge=0,
        description="Deliveries a sink's worker takes straight from the handlers, already "
        "claimed; beyond that (or with 0) they wait in the table for any replica to claim",
    )
    notify_delivery_poll_s: float = Field(
        1.0, gt=0, description="How often a sink's worker looks for due retries"
    )

    notify_burst_window_s: float = Field(300.0, gt=0, description="Rejection burst window")
    notify_burst_threshold: int = Field(
        20, ge=1, description="Rejections from one channel within the window that raise an alert"
    )

    _log_events = field_validator("notify_log_events", "notify_webhook_events")(_selector)
    _smtp_events = field_validator("notify_smtp_events")(_selector)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.notify_webhook_url and self.notify_webhook_secret is None:
            raise ValueError(
                "ORDERFLOW_NOTIFY_WEBHOOK_URL needs ORDERFLOW_NOTIFY_WEBHOOK_SECRET: every "
                "webhook call is signed"
            )
        names = [w.name for w in self.notify_webhooks]
        clashes = sorted({n for n in names if names.count(n) > 1 or n in RESERVED_SINK_NAMES})
        if clashes:
            raise ValueError(f"webhook names must be unique and not log/webhook/email: {clashes}")
        if self.notify_retry_max_s < self.notify_retry_base_s:
            raise ValueError("notify_retry_max_s must not be below notify_retry_base_s")
        return self

    @property
    def notification_log(self) -> Path:
        return self.home / "notifications.log"

    def retry_policy(self) -> domain.RetryPolicy:
        return domain.RetryPolicy(
            max_attempts=self.notify_max_attempts,
            base_s=self.notify_retry_base_s,
            max_delay_s=self.notify_retry_max_s,
            jitter=self.notify_retry_jitter,
        )
