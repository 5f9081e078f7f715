"""How the CLI finds a running system (``$ORDERFLOW_HOME/endpoints.json`` unless told otherwise)
and who it acts as (``--token``, else ``ORDERFLOW_TOKEN``, else the admin token that ``orderflow
up`` wrote to ``$ORDERFLOW_HOME/credentials.json``)."""

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


_token_override: str | None = None


def use_token(token: str | None) -> None:
    """The operator token given on the command line (``orderflow --token ...``)."""
    global _token_override
    _token_override = token


def operator_token() -> str | None:
    if _token_override:
        return _token_override
    if os.environ.get("ORDERFLOW_TOKEN"):
        return os.environ["ORDERFLOW_TOKEN"]
    try:
        creds: Any = json.loads((home() / "credentials.json").read_text())
    except (OSError, ValueError):
        return None
    operators = creds.get("operators") if isinstance(creds, dict) else None
    if not isinstance(operators, dict):
        return None
    usable = [e for e in operators.values() if isinstance(e, dict) and e.get("token")]
    usable.sort(key=lambda e: e.get("role") != "admin")  # the machine's admin first
    return str(usable[0]["token"]) if usable else None
