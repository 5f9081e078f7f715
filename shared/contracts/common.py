"""Value objects used by more than one contract."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# ISO 4217 codes orderflow prices in; extend as markets are added (an additive change).
CURRENCIES = frozenset({"CNY", "EUR", "GBP", "HKD", "JPY", "SGD", "USD"})

Priority = Literal["urgent", "high", "normal", "low"]
PRIORITIES: tuple[str, ...] = ("urgent", "high", "normal", "low")

Sku = Annotated[
    str,
    Field(
        pattern=r"^[A-Z0-9][A-Z0-9-]{2,31}$",
        description="Stock keeping unit: 3-32 upper-case letters, digits and dashes",
        examples=["TEA-001"],
    ),
]
Money = Annotated[
    Decimal,
    Field(
        ge=0,
        lt=Decimal("10000000"),
        decimal_places=2,
        description="An amount in the order's currency, as a decimal string (never a float)",
    ),
]
CurrencyCode = Annotated[
    str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 currency code", examples=["CNY"])
]


class Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Address(Contract):
    name: str = Field(min_length=1, max_length=200, description="Recipient name")
    line1: str = Field(min_length=1, max_length=200, description="Street and number")
    line2: str | None = Field(None, max_length=200, description="Flat, floor, building")
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(pattern=r"^[A-Za-z0-9 -]{2,12}$", description="Postal code")
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 country code")


class Customer(Contract):
    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(
        None,
        max_length=254,
        pattern=r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$",
        description="E-mail address for notifications",
    )
    phone: str | None = Field(
        None,
        pattern=r"^\+?[0-9][0-9 ()-]{5,19}$",
        description="Phone number, digits with optional +, spaces, dashes",
    )
    locale: str = Field("en", pattern=r"^[a-z]{2}(-[A-Z]{2})?$", description="e.g. en, zh-CN")


class OrderLine(Contract):
    sku: Sku
    quantity: int = Field(ge=1, le=1000, description="Units ordered")
    unit_price: Money


class StockLine(Contract):
    """A quantity of one SKU at one warehouse (a reservation, a shipment line)."""

    sku: Sku
    warehouse: str = Field(description="Warehouse code")
    quantity: int = Field(ge=1)


class FieldError(Contract):
    field: str = Field(description="Dotted path of the offending field, e.g. lines.0.quantity")
    reason: str = Field(description="What is wrong, for a person to read")
