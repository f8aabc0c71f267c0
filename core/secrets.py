"""Secrets in text (SPEC §8, §17): the patterns that find them and the function that hides them.
Relayed error text and logged bodies go through the same patterns, so a key an upstream quotes
back reaches neither a client nor the log.

What counts as a secret: `sk-…` keys, bearer tokens, JWTs, well-known key formats (AWS, GitHub,
Slack, Google), and the value of any `api_key` / `secret` / `token` / `password` field.
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


def hide_secrets(text: str) -> str:
    """The text with every secret the patterns find replaced."""
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text
