"""The benchmark run: a fresh system, fixed rates, the maximum, the ceiling, memory, growth."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import orjson
import psutil
from nats.aio.client import Client as NATS

from orderflow.bench import ceiling, history
from orderflow.bench.load import (
    STAGES,
    Load,
    make_load,
    offer,
    percentile,
    restocks,
    stream_count,
    trace,
)
from orderflow.launcher import Launcher, local_token
from shared import rpc, streams, subjects
from shared.runtime import connect_nats

DONE_WHEN = [
    (streams.FULFILLMENT.name, subjects.events_of(subjects.FULFILLMENT, "shipment_queued")),
    (streams.NOTIFY.name, subjects.events_of(subjects.NOTIFY, "notification_sent")),
]


@dataclass
class BenchConfig:
    rates: tuple[float, ...] = (500.0, 1000.0, 2000.0)
    rate_seconds: float = 6.0
    max_orders: int = 20_000
    ceiling_messages: int = 40_000
    history_orders: int = 1_000_000
    home: Path | None = None
    smoke: bool = False


def say(text: str) -> None:
    print(text, flush=True)


def peak_rss_mb(pid: int) -> float:
    """The kernel's high-water mark of the process's resident memory (VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(float(psutil.Process(pid).memory_info().rss) / 2**20, 1)


def note_peak_rss(rss: dict[str, float], launcher: Launcher) -> None:
    """Raise each service's entry in ``rss`` to its process's high-water mark so far."""
    for name, proc in launcher.services.items():
        if proc.proc:
            rss[name] = max(rss.get(name, 0.0), peak_rss_mb(proc.proc.pid))


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def stage_summary(load: Load, traced: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": load.name,
        "orders": load.n,
        "offered_per_s": load.rate or None,
        "achieved_per_s": round(load.n / (load.completed - load.started), 1),
        "problems": traced.problems[:20],
    }
    for stage in STAGES:
        lat = traced.latencies_ms(stage)
        out[stage] = {f"p{p}_ms": percentile(lat, p) for p in (50, 95, 99)}
    return out


async def seed(nc: NATS, token: str) -> None:
    for command in restocks():
        await rpc.call(nc, "inventory", "restock", command, timeout=30, token=token)


async def run_ceiling(url: str, workdir: Path, n: int, payload_size: int) -> float:
    await ceiling.create_streams(url)
    procs = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, not on a hot path
            [
                sys.executable,
                "-m",
                "orderflow.bench.ceiling",
                str(hop),
                url,
                str(workdir / f"ceiling-{hop}.db"),
            ]
        )
        for hop in range(1, ceiling.HOPS + 1)
    ]
    try:
        nc = await nats.connect(url)
        js = nc.jetstream(publish_async_max_pending=20_000)
        await asyncio.sleep(1.0)  # let the four hops subscribe
        body = b"x" * payload_size
        end = ceiling.stream_name(ceiling.HOPS + 1)
        started = time.monotonic()
        pending = []
        for i in range(n):
            pending.append(
                await js.publish_async(ceiling.subject(1), body, headers={"Nats-Msg-Id": f"c{i}"})
            )
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        deadline = time.monotonic() + 300
        while await stream_count(js, end) < n:
            if time.monotonic() > deadline:
                raise TimeoutError("the ceiling chain did not finish")
            await asyncio.sleep(0.02)
        took = time.monotonic() - started
        await nc.close()
        return n / took
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


async def run_load(
    nc: NATS, launcher: Launcher, load: Load, timeout: float
) -> tuple[dict[str, float], float]:
    """Offer the load; returns the CPU seconds each service and nats-server spent meanwhile."""
    pids = {s: p.proc.pid for s, p in launcher.services.items() if p.proc}
    before = {s: cpu_seconds(pid) for s, pid in pids.items()}
    nats_before = cpu_seconds(launcher.nats.proc.pid) if launcher.nats.proc else 0.0
    await offer(nc.jetstream(), load, DONE_WHEN, timeout=timeout)
    cpu = {s: round(cpu_seconds(pid) - before[s], 2) for s, pid in pids.items()}
    nats_cpu = (cpu_seconds(launcher.nats.proc.pid) - nats_before) if launcher.nats.proc else 0.0
    return cpu, nats_cpu


def per_1000(cpu: dict[str, float], nats_cpu: float, orders: int) -> dict[str, Any]:
    """CPU seconds per 1,000 orders: each service, their total, nats-server."""
    return {
        "services": {s: round(c / orders * 1000, 3) for s, c in cpu.items()},
        "services_total": round(sum(cpu.values()) / orders * 1000, 3),
        "nats": round(nats_cpu / orders * 1000, 3),
    }


async def max_run(
    nc: NATS, launcher: Launcher, name: str, n: int, seed_no: int
) -> tuple[Load, dict[str, float], float]:
    load = make_load(name, n, rate=0, seed=seed_no)
    cpu, nats_cpu = await run_load(nc, launcher, load, timeout=600)
    return load, cpu, nats_cpu


GROWTH_ORDER = ("empty", "grown", "grown", "empty")


async def measure_growth(
    cfg: BenchConfig, home: Path, nc: NATS, launcher: Launcher, rss: dict[str, float]
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Throughput with ``cfg.history_orders`` orders stored, relative to the empty system.

    A second system (its own nats-server, services and databases) is started beside the first,
    its databases filled with the history while its services are stopped, and the two take
    turns: empty, grown, grown, empty, each a maximum run of ``cfg.max_orders``. Taking turns
    keeps the machine's drift (±15 % within an hour here) out of the ratio: run one after the
    other, the same code measured 0.63 to 1.07. Returns the growth figures, the runs and any
    correctness problems; raises ``rss`` to the grown services' peaks.
    """
    say(f"growth: a second system with {cfg.history_orders:,} orders of history ...")
    grown_home = home / "grown"
    other = Launcher(
        grown_home, simulator=False, extra_env={"ORDERFLOW_LOG_LEVEL": "WARNING"}, out=sys.stdout
    )
    growth: dict[str, Any] = {"history_orders": cfg.history_orders}
    try:
        info = await other.start()
        other_nc = await connect_nats(info["nats_url"], "orderflow-bench", auth=other.admin_auth())
        await seed(other_nc, local_token(other.credentials))
        # Stopped services, so the history goes into files nobody has open; it is then synced:
        # gigabytes written in a minute or two are otherwise written back during the measured
        # runs (a million real orders would have been written over days).
        for proc in other.services.values():
            proc.stop()
        started = time.monotonic()
        took = await asyncio.to_thread(
            history.prefill_all, grown_home, other.services, cfg.history_orders
        )
        growth["prefill_s"] = round(time.monotonic() - started, 1)
        growth.update({f"prefill_s_{name}": tables for name, tables in took.items()})
        started = time.monotonic()
        await asyncio.to_thread(os.sync)
        growth["sync_s"] = round(time.monotonic() - started, 1)
        for proc in other.services.values():
            proc.start()
        await other.wait_ready(timeout=120)
        # The restarted services first serve a few seconds of orders, unmeasured: the empty
        # system's are warm (caches, compiled statements), and what is compared is the orders
        # stored, not a restart.
        warm = make_load("warm_grown", min(cfg.max_orders, 4000), rate=0, seed=9)
        await run_load(other_nc, other, warm, timeout=600)
        systems = {"empty": (nc, launcher), "grown": (other_nc, other)}
        runs: list[tuple[str, Load, dict[str, float], float]] = []
        for i, side in enumerate(GROWTH_ORDER, start=1):
            side_nc, side_launcher = systems[side]
            name = f"{side}_{i}"
            say(f"growth: {name}, {cfg.max_orders} orders as fast as possible ...")
            load, cpu, nats_cpu = await max_run(
                side_nc, side_launcher, name, cfg.max_orders, 20 + i
            )
            runs.append((side, load, cpu, nats_cpu))
        # Each system's streams read once, after the runs (not between them).
        empty_loads = [load for side, load, _, _ in runs if side == "empty"]
        grown_loads = [load for side, load, _, _ in runs if side == "grown"]
        traced = {**await trace(nc, empty_loads), **await trace(other_nc, [warm, *grown_loads])}
        problems = [p for t in traced.values() for p in t.problems]
        results: list[dict[str, Any]] = []
        for side, load, cpu, nats_cpu in runs:
            summary = stage_summary(load, traced[load.name])
            summary["cpu_s_per_1000_orders"] = per_1000(cpu, nats_cpu, load.n)
            summary["growth"] = side
            results.append(summary)
        rates = {
            side: [r["achieved_per_s"] for r in results if r["growth"] == side] for side in systems
        }
        growth["empty_orders_per_s"] = rates["empty"]
        growth["orders_per_s"] = rates["grown"]
        growth["ratio"] = round(sum(rates["grown"]) / sum(rates["empty"]), 3)
        note_peak_rss(rss, other)
        await other_nc.close()
    finally:
        other.stop()
    return growth, results, problems


async def bench(cfg: BenchConfig) -> dict[str, Any]:
    home = cfg.home or Path(tempfile.mkdtemp(prefix="orderflow-bench-"))
    report: dict[str, Any] = {"home": str(home), "machine": {"cpus": os.cpu_count()}}
    launcher = Launcher(
        home, simulator=False, extra_env={"ORDERFLOW_LOG_LEVEL": "WARNING"}, out=sys.stdout
    )
    rss: dict[str, float] = {}
    try:
        info = await launcher.start()
        nc = await connect_nats(info["nats_url"], "orderflow-bench", auth=launcher.admin_auth())
        await seed(nc, local_token(launcher.credentials))
        loads: list[Load] = []
        rate_cpu: dict[str, dict[str, Any]] = {}
        for i, rate in enumerate(cfg.rates):
            load = make_load(
                f"rate{int(rate)}", max(50, int(rate * cfg.rate_seconds)), rate, 100 + i
            )
            say(f"offering {load.n} orders at {rate:g}/s ...")
            rate_cpu[load.name] = per_1000(*await run_load(nc, launcher, load, 300), load.n)
            loads.append(load)
            await asyncio.sleep(1.0)
        say(f"offering {cfg.max_orders} orders as fast as possible ...")
        max_load, cpu, nats_cpu = await max_run(nc, launcher, "max", cfg.max_orders, 7)
        loads.append(max_load)
        traced = await trace(nc, loads)
        at_max = rate_cpu[max_load.name] = per_1000(cpu, nats_cpu, max_load.n)
        results = [stage_summary(load, traced[load.name]) for load in loads]
        for r in results:
            r["cpu_s_per_1000_orders"] = rate_cpu.get(r["name"])
        problems = [p for load in loads for p in traced[load.name].problems]
        orders_per_s = results[-1]["achieved_per_s"]
        say(f"orderflow: {orders_per_s} orders/s end to end (queued and notified)")

        sample = await read_one_accepted(nc)
        say(f"ceiling: {cfg.ceiling_messages} messages of {len(sample)} bytes through 4 hops ...")
        ceiling_per_s = round(
            await run_ceiling(launcher.client_url(), home, cfg.ceiling_messages, len(sample)),
            1,
        )
        say(f"ceiling: {ceiling_per_s} messages/s")

        growth: dict[str, Any] = {"history_orders": cfg.history_orders}
        if cfg.history_orders > 0:
            growth, grown_results, grown_problems = await measure_growth(
                cfg, home, nc, launcher, rss
            )
            results += grown_results
            problems += grown_problems
        # Peaks (VmHWM): one read at the end covers every run of these processes.
        note_peak_rss(rss, launcher)
        await nc.close()
    finally:
        launcher.stop()

    at_1000 = next((r for r in results if r["offered_per_s"] == 1000), None)
    report.update(
        {
            "orders_per_s": orders_per_s,
            "ceiling_per_s": ceiling_per_s,
            "ratio": round(orders_per_s / ceiling_per_s, 3),
            "p99_reserved_ms_at_1000": at_1000["reserved"]["p99_ms"] if at_1000 else None,
            "peak_rss_mb": max(rss.values()) if rss else None,
            "peak_rss_mb_by_service": rss,
            "cpu_s_per_1000_orders": at_max["services"],
            "cpu_s_per_1000_orders_total": at_max["services_total"],
            "nats_cpu_s_per_1000_orders": at_max["nats"],
            "growth_ratio": growth.get("ratio"),
            "growth": growth,
            "runs": results,
            "problems": problems,
            "correct": not problems,
        }
    )
    if cfg.home is None and not problems:
        # Its own temporary folder: gigabytes after the growth run. Kept when something went
        # wrong (the services' logs are there), or when the caller named the folder.
        shutil.rmtree(home, ignore_errors=True)
    else:
        say(f"data and logs kept in {home}")
    return report


async def read_one_accepted(nc: NATS) -> bytes:
    js = nc.jetstream()
    msg = await js.get_last_msg(
        streams.INTAKE.name, subjects.events_of(subjects.INTAKE, "order_accepted")
    )
    return bytes(msg.data or b"")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in report["runs"] if "growth" not in r]
    x = [r["achieved_per_s"] for r in runs]
    fig, ax = plt.subplots(figsize=(8, 5))
    for stage, style in (("reserved", "o-"), ("queued", "s-"), ("notified", "^-")):
        for p, alpha in (("p50_ms", 1.0), ("p99_ms", 0.5)):
            ax.plot(
                x,
                [r[stage][p] for r in runs],
                style,
                alpha=alpha,
                label=f"{stage} {p.removesuffix('_ms')}",
            )
    ax.set_xlabel("orders/s (achieved; the last point is the maximum)")
    ax.set_ylabel("ms from submission")
    ax.set_yscale("log")
    ax.set_title(
        f"orderflow latency vs load — max {report['orders_per_s']}/s, "
        f"ceiling {report['ceiling_per_s']}/s (ratio {report['ratio']})"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def print_report(report: dict[str, Any]) -> None:
    say("")
    say(
        f"{'run':<10} {'offered/s':>9} {'achieved/s':>10} {'cpu s/1k':>13}  "
        + "  ".join(f"{s + ' p50/p95/p99 ms':>28}" for s in STAGES)
    )
    for r in report["runs"]:
        cells = "  ".join(
            f"{r[s]['p50_ms']!s:>8}/{r[s]['p95_ms']!s:>8}/{r[s]['p99_ms']!s:>9}" for s in STAGES
        )
        cpu = r.get("cpu_s_per_1000_orders")
        used = f"{cpu['services_total']}+{cpu['nats']}" if cpu else "-"
        say(
            f"{r['name']:<10} {r['offered_per_s'] or 'max'!s:>9} {r['achieved_per_s']:>10} "
            f"{used:>13}  {cells}"
        )
    say("(cpu s/1k: CPU seconds per 1,000 orders, the four services + nats-server)")
    say("")
    for key in (
        "orders_per_s",
        "ceiling_per_s",
        "ratio",
        "p99_reserved_ms_at_1000",
        "peak_rss_mb",
        "cpu_s_per_1000_orders_total",
        "nats_cpu_s_per_1000_orders",
        "growth_ratio",
    ):
        say(f"{key:<30} {report[key]}")
    say(f"{'peak_rss_mb_by_service':<30} {report['peak_rss_mb_by_service']}")
    say(f"{'cpu_s_per_1000_orders':<30} {report['cpu_s_per_1000_orders']}")
    for side in ("empty", "grown"):
        runs = [r["cpu_s_per_1000_orders"] for r in report["runs"] if r.get("growth") == side]
        if runs:
            mean = {
                name: round(sum(r["services"][name] for r in runs) / len(runs), 3)
                for name in runs[0]["services"]
            }
            say(f"{'  ... growth runs, ' + side:<30} {mean}")
    say(
        "correct: every order reached every stage exactly once"
        if report["correct"]
        else f"FAILED: {len(report['problems'])} problems, e.g. {report['problems'][:5]}"
    )


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))


def main_sync(cfg: BenchConfig, json_path: Path | None, png_path: Path | None) -> int:
    try:
        import uvloop

        report = uvloop.run(bench(cfg))
    except ImportError:
        report = asyncio.run(bench(cfg))
    print_report(report)
    if json_path:
        write_json(report, json_path)
        say(f"figures written to {json_path}")
    if png_path:
        plot(report, png_path)
        say(f"plot written to {png_path}")
    return 0 if report["correct"] else 1
