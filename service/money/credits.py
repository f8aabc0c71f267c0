"""Credits as the API takes and shows them: integer micro-credits inside, decimal numbers outside."""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from core.errors import InvalidRequest

MICRO = 1_000_000
MAX_AMOUNT = 10 ** 12 * MICRO  # the most credits one operation may move (fits a signed 64-bit column)
PLAIN_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")  # ASCII digits only: no "1_000", "٥", " 5 "


def limit_micro(value, param: str) -> int | None:
    """A credits limit a client set (null: none) as micro-credits; below zero is a 400."""
    micro = None if value is None else to_micro(value, param)
    if micro is not None and micro < 0:
        raise InvalidRequest(f"'{param}' must not be negative", param=param)
    return micro


def to_micro(value, param: str = "amount") -> int:
    """Credits (a JSON number, or a string holding a plain decimal number, at most 6 decimals)
    as integer micro-credits."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise InvalidRequest(f"'{param}' must be a number", param=param)
    if isinstance(value, str) and not PLAIN_DECIMAL.fullmatch(value):
        raise InvalidRequest(f"'{param}' must be a plain decimal number such as 12.5", param=param)
    try:
        amount = Decimal(str(value)) * MICRO
    except InvalidOperation:
        raise InvalidRequest(f"'{param}' must be a number", param=param) from None
    if not amount.is_finite() or amount != amount.to_integral_value():
        raise InvalidRequest(f"'{param}' must be a finite number with at most 6 decimals", param=param)
    if abs(amount) > MAX_AMOUNT:
        raise InvalidRequest(f"'{param}' must be at most {MAX_AMOUNT // MICRO} credits", param=param)
    return int(amount)


def to_credits(micro: int) -> float | Decimal:
    """Micro-credits as the API shows them: a number with up to 6 decimals, exact at any size
    (a float has 15 exact digits; larger amounts are Decimals, which the JSON writer prints as
    numbers)."""
    if -EXACT_FLOAT < micro < EXACT_FLOAT:
        return round(micro / MICRO, 6)
    return Decimal(micro).scaleb(-6)


EXACT_FLOAT = 10 ** 15  # micro-credits below which a float's shortest repr is exact
