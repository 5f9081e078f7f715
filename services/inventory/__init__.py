"""Inventory: stock that is never oversold and never lost."""
