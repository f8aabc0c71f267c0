"""Unit prices per token class and what a call costs (SPEC §9).

Prices are integer micro-credits per 1000 tokens. A catalogue row names up to
seven prices; a class without its own falls back to the input price (cached
input, cache writes) or the output price (reasoning), and those to the row's
`cost_per_1k_tokens`, so catalogues written before the classes keep their meaning.
"""
from __future__ import annotations

import math

from core.usage import CLASSES, Usage

COLUMNS = {"input": "cost_per_1k_input_tokens", "cached_input": "cost_per_1k_cached_input_tokens",
           "cache_write_5m": "cost_per_1k_cache_write_5m_tokens",
           "cache_write_1h": "cost_per_1k_cache_write_1h_tokens",
           "output": "cost_per_1k_output_tokens", "reasoning": "cost_per_1k_reasoning_tokens"}
FALLBACK = {"cached_input": "input", "cache_write_5m": "input", "cache_write_1h": "input",
            "reasoning": "output"}
PROMPT_CLASSES = ("input", "cached_input", "cache_write_5m", "cache_write_1h")
COMPLETION_CLASSES = ("output", "reasoning")


def resolve(row) -> dict[str, int]:
    """The price of every class for a catalogue row (an object or a dict of its columns)."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name, None)
    base = get("cost_per_1k_tokens") or 0
    prices = {}
    for cls in ("input", "output", "cached_input", "cache_write_5m", "cache_write_1h", "reasoning"):
        own = get(COLUMNS[cls])
        prices[cls] = own if own is not None else prices[FALLBACK[cls]] if cls in FALLBACK else base
    return {cls: prices[cls] for cls in CLASSES}


def costs(prices: dict[str, int], usage: Usage) -> dict[str, int]:
    """Micro-credits per class: ceil(tokens x price / 1000), each rounded up once; the charge
    is their sum."""
    return {cls: math.ceil(tokens * prices[cls] / 1000) for cls, tokens in usage.classes().items()}


def charge(prices: dict[str, int], usage: Usage) -> int:
    return sum(costs(prices, usage).values())


def bound(prices: dict[str, int], prompt_tokens: int, completion_tokens: int) -> int:
    """The most a call of these sizes can cost, whichever classes its tokens fall in: every
    token at its side's dearest price, plus a micro-credit for each class whose cost can have
    a fraction to round up (a price that is not a whole number of micro-credits a token)."""
    total = 0
    for tokens, group in ((prompt_tokens, PROMPT_CLASSES), (completion_tokens, COMPLETION_CLASSES)):
        rounding = sum(1 for c in group if prices[c] % 1000)
        total += tokens * max(prices[c] for c in group) // 1000 + min(rounding, tokens)
    return total
