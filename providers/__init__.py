"""Adapters by wire-protocol name (the catalogue's `api`)."""
from __future__ import annotations

from providers.anthropic import AnthropicAdapter
from providers.gemini import GeminiAdapter
from providers.ollama import OllamaAdapter
from providers.openai import OpenAIAdapter
from providers.openai_responses import OpenAIResponsesAdapter

ADAPTERS = {
    "openai": OpenAIAdapter(),
    "ollama": OllamaAdapter(),
    "gemini": GeminiAdapter(),
    "anthropic": AnthropicAdapter(),
    "openai_responses": OpenAIResponsesAdapter(),
}
