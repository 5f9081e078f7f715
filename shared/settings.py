"""Settings read from the environment (prefix ``ORDERFLOW_``) with production defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every service reads; each service may subclass it with its own fields."""

    model_config = SettingsConfigDict(env_prefix="ORDERFLOW_", extra="ignore")

    home: Path = Field(Path("var"), description="Folder for databases, logs and endpoints.json")
    nats_url: str = Field(
        "nats://127.0.0.1:4222", description="NATS server URL(s), comma separated"
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy async URL; default: a SQLite file per service under home",
    )
    http_host: str = "127.0.0.1"
    http_port: int = Field(0, description="0 picks a free port")

    batch_max: int = Field(
        200, ge=1, le=5000, description="Most messages applied in one transaction"
    )
    linger_s: float = Field(
        0.1,
        ge=0,
        le=5,
        description="How long a consumer off the order's critical path (status views, later "
        "notices) lets a batch fill before applying it: fewer, larger transactions leave the "
        "CPU to the path from submission to shipment",
    )
    max_deliver: int = Field(5, ge=1, description="Tries before a message is dead-lettered")
    nak_delay_s: float = Field(1.0, ge=0, description="First redelivery delay; doubles per try")
    ack_wait_s: float = Field(30.0, gt=0)
    max_ack_pending: int = Field(20_000, ge=1)

    stream_replicas: int = Field(1, ge=1, le=5, description="1 locally, 3 in a cluster")
    duplicate_window_s: float = Field(300.0, gt=0, description="JetStream dedup window")
    outbox_sweep_s: float = Field(1.0, gt=0, description="How often the relay looks for stragglers")

    # How this process authenticates to NATS (deploy/README.md): a user and password (one user
    # per service, see shared/nats_access.py) or a credentials file (JWT + nkey, operator mode).
    nats_user: str | None = Field(None, description="NATS user name (e.g. the service's name)")
    nats_password: SecretStr | None = Field(None, description="Password of nats_user")
    nats_creds_file: Path | None = Field(None, description="NATS .creds file (JWT and nkey seed)")
    nats_inbox_prefix: str | None = Field(
        None, description="Where replies arrive; default _INBOX.<nats_user> (its permissions)"
    )
    nats_tls_ca_file: Path | None = Field(None, description="CA that signed the NATS servers")
    nats_tls_cert_file: Path | None = Field(None, description="Client certificate (mutual TLS)")
    nats_tls_key_file: Path | None = Field(None, description="Key of nats_tls_cert_file")
    nats_sync_interval: str | None = Field(
        None,
        pattern=r"^(always|\d+(ms|s|m|h))$",
        description="Embedded server: JetStream fsync interval ('always', '10s'); server default 2m",
    )

    simulator: bool = Field(False, description="Fulfillment: run the warehouse simulator")
    simulator_min_delay_s: float = 0.2
    simulator_max_delay_s: float = 1.5
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one object per line with order and correlation ids"
    )
    backlog_interval_s: float = Field(
        5.0, gt=0, description="How often outbox and consumer backlog gauges are refreshed"
    )

    operators: dict[str, Any] = Field(
        default_factory=dict,
        description="Operator tokens as JSON: {name: {'role': sales|warehouse|finance|admin, "
        "'token_sha256': hex}}, added to those of the operators file",
    )
    operators_file: Path | None = Field(
        None,
        description="JSON file whose 'operators' section holds operator tokens; default: "
        "credentials.json in the home folder, if it exists",
    )

    def operators_path(self) -> Path:
        return self.operators_file or self.home / "credentials.json"

    def database_url_for(self, service: str) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.home / f'{service}.db').resolve()}"
