"""Cost per 100M requests (FastFormers' formula) and the price it assumes when the user gives none.

Kept free of heavy imports: the CLI shows the default in its help.
"""

from __future__ import annotations

# USD per machine hour: the on-demand list price of a 2-vCPU x86 cloud instance (AWS c6i.large, us-east-1).
# An assumption, so that the cost column is never silently missing; reports say so, --price-per-hour sets yours.
DEFAULT_PRICE_PER_HOUR = 0.085


def usd_per_100m(throughput_per_s: float, price_per_hour: float) -> float:
    """The hours one machine needs for 10^8 requests at ``throughput_per_s``, times its hourly price."""
    return price_per_hour * 1e8 / (throughput_per_s * 3600.0)


def price_note(price_per_hour: float) -> str:
    return (
        ", assumed: AWS c6i.large on demand; --price-per-hour sets yours"
        if price_per_hour == DEFAULT_PRICE_PER_HOUR
        else ""
    )
