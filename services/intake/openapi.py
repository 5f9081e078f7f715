"""The OpenAPI 3.1 description of intake's HTTP API, served on GET /openapi.json.

Written by hand next to the routes (http_api.py), with the order and answer schemas taken from
the wire contracts themselves; a test compares it with the routes the service really has and
checks real responses against the documented schemas.
"""

from __future__ import annotations

from typing import Any

from shared.contracts.intake import OrderSubmission, SubmissionAnswer

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problem(description: str) -> dict[str, Any]:
    return _json(_ref("Problem"), description)


UNAUTHORISED = _problem("No valid key in `Authorization: Bearer <key>`")
BEARER: list[dict[str, list[str]]] = [{"channelKey": []}]


def _contract_schemas() -> dict[str, Any]:
    """OrderSubmission and SubmissionAnswer as pydantic describes them, their nested models
    lifted into components."""
    schemas: dict[str, Any] = {}
    for model in (OrderSubmission, SubmissionAnswer):
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


STRING = {"type": "string"}
NULLABLE_STRING = {"type": ["string", "null"]}
INTEGER = {"type": "integer"}

SCHEMAS: dict[str, Any] = {
    "Problem": _object(
        {"error": STRING, "errors": {"type": "array", "items": _ref("FieldError")}},
        ["error"],
    ),
    "TooLarge": _object(
        {
            "outcome": {"const": "rejected"},
            "errors": {"type": "array", "items": _ref("FieldError")},
        },
        ["outcome", "errors"],
    ),
    "Batch": _object(
        {
            "orders": {
                "type": "array",
                "maxItems": 1000,
                "items": {"type": "object"},
                "description": "Orders in the channel's own shape or the canonical one",
            }
        },
        ["orders"],
    ),
    "BatchResult": _object(
        {
            "accepted": INTEGER,
            "rejected": INTEGER,
            "duplicate": INTEGER,
            "answers": {
                "type": "array",
                "items": _ref("SubmissionAnswer"),
                "description": "One answer per order, in the order sent",
            },
        },
        ["accepted", "rejected", "duplicate", "answers"],
    ),
    "TimelineEntry": _object(
        {
            "at": {"type": "string", "format": "date-time"},
            "what": STRING,
            "by": {
                "enum": ["channel", "intake", "inventory", "fulfillment"],
                "description": "The service whose event recorded it",
            },
            "detail": STRING,
        },
        ["at", "what", "by"],
    ),
    "OrderStatus": _object(
        {
            "order_id": STRING,
            "status": STRING,
            "channel": STRING,
            "external_id": NULLABLE_STRING,
            "priority": STRING,
            "requested_priority": NULLABLE_STRING,
            "priority_rule": NULLABLE_STRING,
            "priority_reason": {"type": "string", "description": "The rule and its conditions"},
            "owner": NULLABLE_STRING,
            "customer_tier": NULLABLE_STRING,
            "currency": STRING,
            "total": {"type": "string", "description": "Decimal amount"},
            "suspected_duplicate_of": {"type": ["array", "null"], "items": STRING},
            "errors": {"type": "array", "items": _ref("FieldError")},
            "submitted_at": {"type": "string", "format": "date-time"},
            "timeline": {"type": "array", "items": _ref("TimelineEntry")},
        },
        ["order_id", "status", "channel", "external_id", "submitted_at", "timeline"],
    ),
    "OrderSummary": _object(
        {
            "order_id": STRING,
            "status": STRING,
            "channel": STRING,
            "external_id": NULLABLE_STRING,
            "submitted_at": {"type": "string", "format": "date-time"},
            "priority": STRING,
            "owner": NULLABLE_STRING,
            "total": STRING,
            "currency": STRING,
            "flagged": {"type": "boolean", "description": "Suspected duplicate, to review"},
        },
        ["order_id", "status", "channel", "external_id", "submitted_at"],
    ),
    "OrderPage": _object(
        {
            "orders": {"type": "array", "items": _ref("OrderSummary")},
            "next": {
                "type": ["string", "null"],
                "description": "Pass as `after` for the next page; null on the last",
            },
        },
        ["orders", "next"],
    ),
    "CancelRequest": _object({"reason": {"type": "string", "maxLength": 500}}, []),
    "CancelAnswer": _object(
        {
            "order_id": STRING,
            "outcome": {"enum": ["requested", "pending", "refused"]},
            "status": STRING,
            "reason": STRING,
        },
        ["order_id", "outcome", "status", "reason"],
    ),
    "Health": {"type": "object"},
}

LIST_PARAMETERS = [
    {
        "name": "status",
        "in": "query",
        "schema": {
            "enum": [
                "accepted",
                "backordered",
                "reserved",
                "queued",
                "picked",
                "packed",
                "shipped",
                "delivered",
                "cancelled",
                "rejected",
            ]
        },
    },
    {
        "name": "channel",
        "in": "query",
        "schema": STRING,
        "description": "A channel's key may only ask for its own",
    },
    {
        "name": "since",
        "in": "query",
        "schema": STRING,
        "description": "Submitted at or after: RFC 3339 time or epoch seconds",
    },
    {"name": "flagged", "in": "query", "schema": {"type": "boolean"}},
    {"name": "after", "in": "query", "schema": STRING, "description": "Cursor: `next` of a page"},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
]
ORDER_ID = {"name": "order_id", "in": "path", "required": True, "schema": STRING}


def document() -> dict[str, Any]:
    submission_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [_ref("OrderSubmission"), {"type": "object"}],
                    "description": "The canonical order, or the channel's own payload "
                    "(WeChat mini-program, phone-desk form, marketplace webhook): see "
                    "docs/intake.md",
                }
            }
        },
    }
    answer = _ref("SubmissionAnswer")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "orderflow intake",
            "version": "1",
            "description": "Orders in from every channel; every submission gets exactly one "
            "answer: accepted (an order id), rejected (every field error) or duplicate (the "
            "original order id).",
        },
        "components": {
            "schemas": {**_contract_schemas(), **SCHEMAS},
            "securitySchemes": {
                "channelKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A channel's key (from credentials.json) or an operator's",
                }
            },
        },
        "paths": {
            "/orders": {
                "post": {
                    "summary": "Submit one order as the key's channel",
                    "security": BEARER,
                    "requestBody": submission_body,
                    "responses": {
                        "202": _json(answer, "Accepted: a new order"),
                        "200": _json(answer, "Duplicate: the original order's id"),
                        "422": _json(answer, "Rejected: every problem, each with its field"),
                        "413": _json(_ref("TooLarge"), "Larger than 64 KiB"),
                        "401": UNAUTHORISED,
                        "403": _problem("An operator key: orders come from channels"),
                    },
                },
                "get": {
                    "summary": "List orders, newest first, a page at a time",
                    "security": BEARER,
                    "parameters": LIST_PARAMETERS,
                    "responses": {
                        "200": _json(_ref("OrderPage"), "A page of orders"),
                        "400": _problem("A filter is not understood"),
                        "401": UNAUTHORISED,
                        "403": _problem("A channel's key asked for another channel"),
                    },
                },
            },
            "/orders:batch": {
                "post": {
                    "summary": "Submit up to 1,000 orders in one request, one answer each",
                    "security": BEARER,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("Batch")}},
                    },
                    "responses": {
                        "200": _json(_ref("BatchResult"), "One answer per order"),
                        "422": _json(answer, "The body is not JSON: kept raw and rejected"),
                        "400": _problem("JSON, but not {'orders': [...]}"),
                        "413": _problem("More than 1,000 orders or 16 MiB"),
                        "401": UNAUTHORISED,
                        "403": _problem("An operator key: orders come from channels"),
                    },
                },
            },
            "/orders/{order_id}": {
                "get": {
                    "summary": "An order's status, priority (and why) and timeline",
                    "security": BEARER,
                    "parameters": [ORDER_ID],
                    "responses": {
                        "200": _json(_ref("OrderStatus"), "The status view"),
                        "401": UNAUTHORISED,
                        "404": _problem("No such order (or another channel's)"),
                    },
                },
            },
            "/orders/{order_id}/trace": {
                "get": {
                    "summary": "What every service knows of the order, as one timeline",
                    "description": "Asks the four services over NATS (2 s each) and merges "
                    "their state changes and the events they consumed and produced, with stream "
                    "sequences; `missing` names a service that did not answer.",
                    "security": BEARER,
                    "parameters": [ORDER_ID],
                    "responses": {
                        "200": _json({"type": "object"}, "The merged trace"),
                        "401": UNAUTHORISED,
                        "404": _problem("No such order (or another channel's)"),
                    },
                },
            },
            "/orders/{order_id}/cancel": {
                "post": {
                    "summary": "Ask to cancel an order; fulfillment decides",
                    "security": BEARER,
                    "parameters": [ORDER_ID],
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": _ref("CancelRequest")}},
                    },
                    "responses": {
                        "202": _json(_ref("CancelAnswer"), "Requested: fulfillment will decide"),
                        "200": _json(_ref("CancelAnswer"), "Already requested, not yet decided"),
                        "409": _json(
                            _ref("CancelAnswer"), "Refused: shipped, delivered or already cancelled"
                        ),
                        "400": _problem("The body is not {'reason': '...'}"),
                        "413": _json(_ref("TooLarge"), "Body larger than 8 KiB"),
                        "401": UNAUTHORISED,
                        "404": _problem("No such order (or another channel's)"),
                    },
                },
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Alive",
                    "responses": {"200": _json(_ref("Health"), "The process runs")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Connected to NATS and the database",
                    "responses": {
                        "200": _json(_ref("Health"), "Ready"),
                        "503": _json(_ref("Health"), "Not ready"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": STRING}},
                        }
                    },
                }
            },
            "/stats": {
                "get": {
                    "summary": "Orders by status (for the launcher's progress line)",
                    "responses": {"200": _json({"type": "object"}, "Counts")},
                }
            },
        },
    }
