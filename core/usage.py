"""Token counts per price class, as every provider's usage is normalised (SPEC §9).

`prompt` and `completion` are OpenAI's totals: the prompt includes tokens read
from a cache and tokens written to one; the completion includes reasoning tokens
the answer never shows. The classes split them without overlap.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

CLASSES = ("input", "cached_input", "cache_write_5m", "cache_write_1h", "output", "reasoning")


@dataclass(frozen=True)
class Usage:
    prompt: int
    completion: int
    cached: int = 0  # prompt tokens read from a cache
    cache_write_5m: int = 0  # prompt tokens written to a cache kept 5 minutes (Anthropic)
    cache_write_1h: int = 0  # ... kept an hour
    reasoning: int = 0  # completion tokens spent thinking

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                object.__setattr__(self, f.name, 0 if not isinstance(value, int) or value < 0 else int(value))

    @property
    def detail(self) -> dict:
        """The classes beyond the two totals, for storing and rebuilding."""
        return {"cached": self.cached, "cache_write_5m": self.cache_write_5m,
                "cache_write_1h": self.cache_write_1h, "reasoning": self.reasoning}

    def classes(self) -> dict[str, int]:
        """Tokens per price class; they sum to prompt + completion (a provider that reports more
        cached or reasoning tokens than its totals is believed for the class, not the rest)."""
        written = self.cache_write_5m + self.cache_write_1h
        return {"input": max(self.prompt - self.cached - written, 0), "cached_input": self.cached,
                "cache_write_5m": self.cache_write_5m, "cache_write_1h": self.cache_write_1h,
                "output": max(self.completion - self.reasoning, 0), "reasoning": self.reasoning}

    def openai(self) -> dict:
        """OpenAI's usage object, details filled for every provider."""
        return {"prompt_tokens": self.prompt, "completion_tokens": self.completion,
                "total_tokens": self.prompt + self.completion,
                "prompt_tokens_details": self.prompt_details(),
                "completion_tokens_details": {"reasoning_tokens": self.reasoning}}

    def prompt_details(self) -> dict:
        """OpenAI's `prompt_tokens_details`: cached tokens, and the tokens written to a cache
        (5m + 1h, billed apart) as OpenAI's schema names them, only when there were some, so a
        provider that writes no cache keeps OpenAI's usual shape."""
        written = self.cache_write_5m + self.cache_write_1h
        return {"cached_tokens": self.cached, **({"cache_write_tokens": written} if written else {})}


def count(value) -> int:
    """A provider's token count, 0 when absent or not a count."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def from_openai(usage: dict) -> Usage:
    """OpenAI (`*_tokens_details`) and DeepSeek (`prompt_cache_hit_tokens`)."""
    prompt_details = usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) else {}
    completion_details = (usage.get("completion_tokens_details")
                          if isinstance(usage.get("completion_tokens_details"), dict) else {})
    cached = count(prompt_details.get("cached_tokens")) or count(usage.get("prompt_cache_hit_tokens"))
    return Usage(count(usage.get("prompt_tokens")), count(usage.get("completion_tokens")), cached=cached,
                 reasoning=count(completion_details.get("reasoning_tokens")))


def from_responses(usage: dict) -> Usage:
    """OpenAI's Responses API (`input_tokens`, `*_tokens_details`)."""
    inp = usage.get("input_tokens_details") if isinstance(usage.get("input_tokens_details"), dict) else {}
    out = usage.get("output_tokens_details") if isinstance(usage.get("output_tokens_details"), dict) else {}
    return Usage(count(usage.get("input_tokens")), count(usage.get("output_tokens")),
                 cached=count(inp.get("cached_tokens")), reasoning=count(out.get("reasoning_tokens")))
