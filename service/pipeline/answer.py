"""What a call answers, before any web framework renders it."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class Answer:
    """A JSON body, or an iterator of SSE events (`events`); its status and headers; and what to
    run once a stream's response is closed, however it ends (read to the end, cut, never read)."""

    body: dict | None = None
    events: Iterator[bytes] | None = None
    status: int = 200
    headers: dict = field(default_factory=dict)
    on_close: list[Callable[[], None]] = field(default_factory=list)

    @property
    def streamed(self) -> bool:
        return self.events is not None
