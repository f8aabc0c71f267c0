"""Checks on message content shared by the adapters that take text only."""
from __future__ import annotations

from service.errors import NotImplementedByProvider


def text_only(messages: list[dict], provider: str) -> None:
    """501 for content parts other than text (images, audio, files) on text-only adapters."""
    for i, m in enumerate(messages):
        content = m.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") != "text":
                    raise NotImplementedByProvider(
                        f"Content parts of type '{part.get('type')}' are not supported by the "
                        f"{provider} provider", param=f"messages[{i}].content")
