"""Stock (inventory): show, restock, adjust, transfer, ledger, forecast, reorder points and
warehouses."""

from __future__ import annotations

import argparse
import getpass
import json
from typing import Any

from orderflow.commands import add_json_flag, call_service


def _default_actor() -> str:
    try:
        return getpass.getuser()[:64] or "cli"
    except Exception:  # no user name (some containers): still say it came from the CLI
        return "cli"


def register(sub: Any) -> None:
    stock = sub.add_parser("stock", help="stock levels and changes")
    stock_sub = stock.add_subparsers(metavar="ACTION")

    show = stock_sub.add_parser(
        "show", help="stock per SKU and warehouse, with reorder point and days of cover"
    )
    show.add_argument("--sku", default=None)
    add_json_flag(show)
    show.set_defaults(func=cmd_stock_show)

    restock = stock_sub.add_parser("restock", help="add units of a SKU to a warehouse")
    restock.add_argument("sku")
    restock.add_argument("quantity", type=int)
    restock.add_argument("--warehouse", default="WH-1")
    restock.add_argument("--reason", default="restock")
    restock.add_argument("--actor", default=None, help="for whom (recorded beside the operator)")
    add_json_flag(restock)
    restock.set_defaults(func=cmd_restock)

    adjust = stock_sub.add_parser(
        "adjust", help="correct the count of a SKU at a warehouse (+N or -N), with a reason"
    )
    adjust.add_argument("sku")
    adjust.add_argument("delta", type=int, help="units to add, or negative to take away")
    adjust.add_argument("--warehouse", required=True)
    adjust.add_argument("--reason", required=True, help="e.g. 'stock take', 'damaged'")
    adjust.add_argument("--actor", default=None, help="who did it (default: your user name)")
    add_json_flag(adjust)
    adjust.set_defaults(func=cmd_adjust)

    transfer = stock_sub.add_parser("transfer", help="move available units between warehouses")
    transfer.add_argument("sku")
    transfer.add_argument("quantity", type=int)
    transfer.add_argument("--from", dest="from_warehouse", required=True)
    transfer.add_argument("--to", dest="to_warehouse", required=True)
    transfer.add_argument("--reason", default="transfer")
    transfer.add_argument("--actor", default=None, help="who did it (default: your user name)")
    add_json_flag(transfer)
    transfer.set_defaults(func=cmd_transfer)

    ledger = stock_sub.add_parser("ledger", help="every movement of a SKU, newest last")
    ledger.add_argument("sku")
    ledger.add_argument("--limit", type=int, default=50)
    add_json_flag(ledger)
    ledger.set_defaults(func=cmd_ledger)

    forecast = stock_sub.add_parser(
        "forecast", help="demand forecast per SKU: daily demand, days of cover, what to reorder"
    )
    forecast.add_argument("--sku", default=None)
    add_json_flag(forecast)
    forecast.set_defaults(func=cmd_forecast)

    reorder = stock_sub.add_parser(
        "reorder", help="set a SKU's reorder point (low-stock alert) and reorder assumptions"
    )
    reorder.add_argument("sku")
    reorder.add_argument(
        "--point", type=int, required=True, help="low stock below this; -1 removes it"
    )
    reorder.add_argument("--lead-time-days", type=float, default=None)
    reorder.add_argument("--cover-days", type=float, default=None)
    reorder.add_argument("--actor", default=None)
    add_json_flag(reorder)
    reorder.set_defaults(func=cmd_reorder)

    wh = stock_sub.add_parser(
        "warehouses", help="list warehouses, or set one's rank (lower preferred) and country"
    )
    wh.add_argument("code", nargs="?", default=None)
    wh.add_argument("--rank", type=int, default=None)
    wh.add_argument("--country", default=None, help="ISO code: orders shipping there prefer it")
    add_json_flag(wh)
    wh.set_defaults(func=cmd_warehouses)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _level_line(row: dict[str, Any]) -> str:
    return (
        f"{row['sku']} at {row['warehouse']}: on hand {row['on_hand']}, "
        f"reserved {row['reserved']}, available {row['available']}"
    )


def cmd_restock(args: argparse.Namespace) -> int:
    row = call_service(
        "inventory",
        "restock",
        {
            "sku": args.sku,
            "quantity": args.quantity,
            "warehouse": args.warehouse,
            "reason": args.reason,
            "actor": args.actor,
        },
    )
    if args.json:
        _print_json(row)
    else:
        print(_level_line(row))
    return 0


def cmd_adjust(args: argparse.Namespace) -> int:
    row = call_service(
        "inventory",
        "adjust",
        {
            "sku": args.sku,
            "warehouse": args.warehouse,
            "delta": args.delta,
            "reason": args.reason,
            "actor": args.actor or _default_actor(),
        },
    )
    if args.json:
        _print_json(row)
    else:
        print(_level_line(row))
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    rows = call_service(
        "inventory",
        "transfer",
        {
            "sku": args.sku,
            "quantity": args.quantity,
            "from_warehouse": args.from_warehouse,
            "to_warehouse": args.to_warehouse,
            "reason": args.reason,
            "actor": args.actor or _default_actor(),
        },
    )
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            print(_level_line(row))
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    entries = call_service("inventory", "ledger", {"sku": args.sku, "limit": args.limit})
    if args.json:
        _print_json(entries)
        return 0
    print(
        f"{'AT':<26} {'WAREHOUSE':<10} {'ON HAND':>8} {'RESERVED':>9}  {'REASON':<20} {'BY':<24} REF"
    )
    for e in entries:
        print(
            f"{e['at'][:26]:<26} {e['warehouse']:<10} {e['delta_on_hand']:>+8} "
            f"{e['delta_reserved']:>+9}  {e['reason'][:20]:<20} {e['actor'][:24]:<24} "
            f"{e['ref'] or ''}"
        )
    return 0


def _cover(row: dict[str, Any]) -> str:
    return "-" if row["days_of_cover"] is None else f"{row['days_of_cover']:.1f}"


def _forecast_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'SKU':<12} {'AVAILABLE':>10} {'REORDER AT':>10} {'DEMAND/DAY':>10} "
        f"{'DAYS COVER':>10} {'REORDER QTY':>11}  LOW"
    )
    for r in rows:
        point = "-" if r["reorder_point"] is None else r["reorder_point"]
        print(
            f"{r['sku']:<12} {r['available']:>10} {point:>10} {r['daily_demand']:>10.1f} "
            f"{_cover(r):>10} {r['suggested_quantity']:>11}  "
            f"{'LOW' if r['below_reorder_point'] else ''}"
        )


def cmd_stock_show(args: argparse.Namespace) -> int:
    payload = {"sku": args.sku} if args.sku else {}
    rows = call_service("inventory", "stock", payload)
    outlook = call_service("inventory", "forecast", payload)
    if args.json:
        _print_json({"stock": rows, "forecast": outlook})
        return 0
    print(
        f"{'SKU':<12} {'WAREHOUSE':<10} {'ON HAND':>8} {'RESERVED':>9} {'AVAILABLE':>10} "
        f"{'SHIPPED':>8} {'RETURNED':>9}"
    )
    for r in rows:
        print(
            f"{r['sku']:<12} {r['warehouse']:<10} {r['on_hand']:>8} {r['reserved']:>9} "
            f"{r['available']:>10} {r.get('shipped', 0):>8} {r.get('returned', 0):>9}"
        )
    print()
    _forecast_table(outlook)
    return 0


def cmd_forecast(args: argparse.Namespace) -> int:
    rows = call_service("inventory", "forecast", {"sku": args.sku} if args.sku else {})
    if args.json:
        _print_json(rows)
    else:
        _forecast_table(rows)
    return 0


def cmd_reorder(args: argparse.Namespace) -> int:
    row = call_service(
        "inventory",
        "reorder",
        {
            "sku": args.sku,
            "reorder_point": None if args.point < 0 else args.point,
            "lead_time_days": args.lead_time_days,
            "target_cover_days": args.cover_days,
            "actor": args.actor or _default_actor(),
        },
    )
    if args.json:
        _print_json(row)
    else:
        _forecast_table([row])
    return 0


def cmd_warehouses(args: argparse.Namespace) -> int:
    if args.code is not None:
        payload: dict[str, Any] = {"code": args.code}
        if args.rank is not None:
            payload["rank"] = args.rank
        if args.country is not None:
            payload["country"] = args.country
        call_service("inventory", "warehouse", payload)
    rows = call_service("inventory", "warehouses", {})
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'WAREHOUSE':<10} {'RANK':>5}  COUNTRY")
    for r in rows:
        print(f"{r['code']:<10} {r['rank']:>5}  {r['country'] or '-'}")
    return 0
