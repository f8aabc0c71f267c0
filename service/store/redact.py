"""Redaction of logged bodies (SPEC §17): secrets (core.secrets: the patterns relayed error text
goes through too), e-mail addresses and card numbers.

A card number is 13 to 19 digits (spaces or dashes between groups allowed) that pass the Luhn
check, so order numbers and timestamps stay readable.
"""
from __future__ import annotations

import re

from core.secrets import SECRET, hide_secrets

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD = re.compile(r"(?<![0-9])(?:[0-9][ -]?){12,18}[0-9](?![0-9])")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _card(match: re.Match) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)


def scrub(text: str | None, known=()) -> str | None:
    """The text with secrets (the `known` ones too: the gateway's provider keys), e-mail
    addresses and card numbers replaced."""
    if not text:
        return text
    for secret in known:
        if secret and len(secret) >= 6:
            text = text.replace(secret, SECRET)
    text = hide_secrets(text)
    text = EMAIL.sub("[EMAIL]", text)
    return CARD.sub(_card, text)


def cut(text: str | None, limit: int) -> str | None:
    """At most `limit` bytes of UTF-8 (never half a character)."""
    if text is None:
        return None
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")
