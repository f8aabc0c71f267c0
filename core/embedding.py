"""An embeddings call (OpenAI's format, https://platform.openai.com/docs/api-reference/embeddings),
validated; bad input is a 400 naming the field."""
from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass, field

from core.errors import InvalidRequest, clip

FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
MAX_INPUTS = 2048


@dataclass
class EmbeddingRequest:
    model: object
    inputs: list  # strings, or token arrays (lists of ints)
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None
    request_id: str = ""
    params: dict = field(default_factory=dict)  # nothing for adapter checks: the fields above are all

    n = 1
    stream = False
    include_usage = False

    @property
    def tokenized(self) -> bool:
        return bool(self.inputs) and isinstance(self.inputs[0], list)

    def prompt_bound(self, image_tokens: int = 0) -> int:
        """No input has more tokens than bytes (or than its token array's length)."""
        if self.tokenized:
            return sum(len(t) for t in self.inputs)
        return sum(len(s.encode()) for s in self.inputs) + len(self.inputs)

    def output_cap(self, row) -> int:
        return 0

    @property
    def prompt_guess(self) -> int:
        """Tokens when a provider counts none (Gemini): 4 bytes a token, at least one an input."""
        if self.tokenized:
            return self.prompt_bound()
        return sum(max(1, math.ceil(len(s.encode()) / 4)) for s in self.inputs)


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _inputs(value) -> list:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _bad("input", "'input' must be a string, a list of strings or a list of token arrays")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        value = [value]  # one token array
    if len(value) > MAX_INPUTS:
        raise _bad("input", f"'input' may hold at most {MAX_INPUTS} items")
    if all(isinstance(v, str) for v in value):
        if any(not v for v in value):
            raise _bad("input", "'input' strings must not be empty")
        return value
    if all(isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v)
           for v in value):
        return value
    raise _bad("input", "'input' must be a string, a list of strings or a list of token arrays")


def embedding_request(body: dict, model, request_id: str) -> EmbeddingRequest:
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise _bad(unknown[0], f"'{clip(unknown[0])}' is not an embeddings parameter")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise _bad("encoding_format", "'encoding_format' must be float or base64")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= 65536):
        raise _bad("dimensions", "'dimensions' must be an integer from 1 to 65536")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user", "'user' must be a string")
    return EmbeddingRequest(model, _inputs(body.get("input")), fmt, dims, user, request_id)


def encode(vector: list[float], fmt: str):
    """A vector as the client asked: floats, or base64 of little-endian float32s (OpenAI's)."""
    if fmt == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
