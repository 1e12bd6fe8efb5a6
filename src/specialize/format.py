"""How numbers are written for people: one formatter for every table, report and message.

A missing or undefined value (None, NaN) is written "-" everywhere, so that a blank cell always
means "not measured" and never a number that happens to print as 0.
"""

from __future__ import annotations

import math
from typing import Any


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value)))


def number(value: Any, digits: int = 3) -> str:
    """1,234.568 (thousands separated, `digits` decimals); "-" when missing."""
    return "-" if missing(value) else f"{value:,.{digits}f}"


def signed(value: Any, digits: int = 3) -> str:
    """+0.012 / -0.034; "-" when missing."""
    return "-" if missing(value) else f"{value:+.{digits}f}"


def share(value: Any) -> str:
    """42%; "-" when missing."""
    return "-" if missing(value) else f"{value:.0%}"


def count(value: Any) -> str:
    """12,345 (a whole number); "-" when missing."""
    return "-" if missing(value) else f"{int(value):,}"


def short(value: Any) -> str:
    """0.71 for a headline sentence; "n/a" when missing (a sentence has no cells)."""
    return "n/a" if missing(value) else f"{value:.2f}"
