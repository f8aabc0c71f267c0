"""Adapters by wire-protocol name (the catalogue's `api`)."""
from __future__ import annotations

from providers.ollama import OllamaAdapter
from providers.openai import OpenAIAdapter

ADAPTERS = {
    "openai": OpenAIAdapter(),
    "ollama": OllamaAdapter(),
}
