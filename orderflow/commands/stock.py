"""Stock (inventory): restock, show."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orderflow.commands import add_json_flag, call_service


def register(sub: Any) -> None:
    stock = sub.add_parser("stock", help="stock levels and changes")
    stock_sub = stock.add_subparsers(metavar="ACTION")
    restock = stock_sub.add_parser("restock", help="add units of a SKU to a warehouse")
    restock.add_argument("sku")
    restock.add_argument("quantity", type=int)
    restock.add_argument("--warehouse", default="WH-1")
    restock.add_argument("--reason", default="restock")
    restock.add_argument("--actor", default="cli")
    add_json_flag(restock)
    restock.set_defaults(func=cmd_restock)
    show = stock_sub.add_parser("show", help="stock per SKU and warehouse")
    show.add_argument("--sku", default=None)
    add_json_flag(show)
    show.set_defaults(func=cmd_stock_show)


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
        print(json.dumps(row, indent=2))
    else:
        print(
            f"{row['sku']} at {row['warehouse']}: on hand {row['on_hand']}, "
            f"reserved {row['reserved']}, available {row['available']}"
        )
    return 0


def cmd_stock_show(args: argparse.Namespace) -> int:
    payload = {"sku": args.sku} if args.sku else {}
    rows = call_service("inventory", "stock", payload)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'SKU':<12} {'WAREHOUSE':<10} {'ON HAND':>8} {'RESERVED':>9} {'AVAILABLE':>10} {'SHIPPED':>8}"
    )
    for r in rows:
        print(
            f"{r['sku']:<12} {r['warehouse']:<10} {r['on_hand']:>8} {r['reserved']:>9} "
            f"{r['available']:>10} {r.get('shipped', 0):>8}"
        )
    return 0
