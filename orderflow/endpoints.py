"""How the CLI finds a running system: ``$ORDERFLOW_HOME/endpoints.json`` unless told otherwise."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from shared import nats_access
from shared.runtime import NatsAuth, StartupError, connect_nats
from shared.settings import ServiceSettings


def home() -> Path:
    return Path(os.environ.get("ORDERFLOW_HOME", "var"))


def endpoints_file(base: Path | None = None) -> Path:
    return (base or home()) / "endpoints.json"


def read_endpoints(base: Path | None = None) -> dict[str, Any]:
    path = endpoints_file(base)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except FileNotFoundError:
        return {}


def write_endpoints(data: dict[str, Any], base: Path | None = None) -> Path:
    path = endpoints_file(base)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path


def nats_url() -> str:
    url = os.environ.get("ORDERFLOW_NATS_URL") or read_endpoints().get("nats_url")
    if not url:
        raise StartupError(
            f"no running orderflow found: {endpoints_file()} does not exist and "
            "ORDERFLOW_NATS_URL is not set (start one with `orderflow up`)"
        )
    return str(url)


def service_url(service: str) -> str:
    env = os.environ.get(f"ORDERFLOW_{service.upper()}_URL")
    url = env or read_endpoints().get("services", {}).get(service)
    if not url:
        raise StartupError(f"no HTTP address known for {service}: is the system up?")
    return str(url)


def nats_auth() -> NatsAuth:
    """ORDERFLOW_NATS_* from the environment; else, on the machine that ran `orderflow up`, the
    cli user's password from $ORDERFLOW_HOME/credentials.json."""
    auth = NatsAuth.from_settings(ServiceSettings())
    if auth.user or auth.creds_file:
        return auth
    try:
        creds = json.loads((home() / "credentials.json").read_text())
    except (FileNotFoundError, ValueError):
        return auth
    password = creds.get("nats", {}).get(nats_access.CLI_USER)
    if not password:
        return auth
    return NatsAuth(**{**auth.__dict__, "user": nats_access.CLI_USER, "password": password})


async def connect() -> NATS:
    url = nats_url()
    return await connect_nats(url, "orderflow-cli", timeout=3.0, auth=nats_auth())
