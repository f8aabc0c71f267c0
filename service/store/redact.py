"""Redaction of logged bodies (SPEC §17): secrets, e-mail addresses and card numbers.

What counts as a secret: `sk-…` keys, bearer tokens, JWTs, well-known key formats (AWS, GitHub,
Slack, Google), and the value of any `api_key` / `secret` / `token` / `password` field. A card
number is 13 to 19 digits (spaces or dashes between groups allowed) that pass the Luhn check,
so order numbers and timestamps stay readable.
"""
from __future__ import annotations

import re

SECRET = "[REDACTED]"
PATTERNS = [
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{6,}"), "Bearer " + SECRET),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), SECRET),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-" + SECRET),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), SECRET),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"), SECRET),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), SECRET),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"), SECRET),
    (re.compile(r"(?i)((?:api[_-]?key|secret|token|password|passwd|authorization)\\?[\"']?\s*[:=]\s*\\?[\"']?)"
                r"(?!bearer\b|\[REDACTED)([^\"'\s,}\\]{6,})"), r"\1" + SECRET),
]
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
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
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
