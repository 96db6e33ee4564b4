"""A small extract-transform-report workflow: ``fetch >> (clean | enrich) >> report``.

Deterministic and tiny, with JSON results; ``enrich`` is an ``async def`` task.
"""

from __future__ import annotations

import asyncio
from typing import Any

from graflow import task, workflow

ORDERS = [
    {"id": 1, "customer": "ada", "amount": 120.0, "country": "GB"},
    {"id": 2, "customer": "grace", "amount": None, "country": "US"},
    {"id": 3, "customer": "linus", "amount": 80.5, "country": "FI"},
    {"id": 4, "customer": "ada", "amount": 42.0, "country": "GB"},
]
REGIONS = {"GB": "EMEA", "FI": "EMEA", "US": "AMER"}


@task
def fetch() -> list[dict[str, Any]]:
    """The raw orders (a fixed sample, so every run gives the same result)."""
    return [dict(order) for order in ORDERS]


@task
def clean(fetch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Orders with an amount."""
    return [order for order in fetch if order["amount"] is not None]


@task
async def enrich(fetch: list[dict[str, Any]]) -> dict[str, str]:
    """Region of each customer (an async lookup)."""
    await asyncio.sleep(0)
    return {order["customer"]: REGIONS.get(order["country"], "OTHER") for order in fetch}


@task
def report(clean: list[dict[str, Any]], enrich: dict[str, str]) -> dict[str, Any]:
    """Revenue per region and the number of orders counted."""
    revenue: dict[str, float] = {}
    for order in clean:
        region = enrich[order["customer"]]
        revenue[region] = round(revenue.get(region, 0.0) + order["amount"], 2)
    return {"orders": len(clean), "revenue": dict(sorted(revenue.items()))}


EXPECTED_REPORT = {"orders": 3, "revenue": {"EMEA": 242.5}}

with workflow("etl") as etl:
    fetch >> (clean | enrich) >> report
