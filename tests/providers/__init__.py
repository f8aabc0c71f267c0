"""Adapter unit tests: recorded provider payloads in, OpenAI shapes out (no I/O)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from core.chat import ChatRequest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture(api: str, name: str) -> bytes:
    return (FIXTURES / api / name).read_bytes()


def lines(api: str, name: str) -> list[bytes]:
    return fixture(api, name).splitlines()


def chat(messages, stream=False, upstream="up-model", max_output=1024, base_url="http://127.0.0.1:9/v1",
         **params) -> ChatRequest:
    model = SimpleNamespace(upstream_model=upstream, max_output_tokens=max_output, name="m",
                            provider="p", base_url=base_url)
    return ChatRequest(model, messages, params, stream)


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
ROUND_TRIP = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 18}"},
]
