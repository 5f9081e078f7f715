"""Fulfillment: shipments, the priority work queue and its SLA deadlines."""
