"""The official OpenAI schemas (../shared/openai/chat_schemas.json, vendored under fixtures/)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from jsonschema import Draft202012Validator

HERE = Path(__file__).parent
SHARED = HERE.parent.parent / "shared" / "openai" / "chat_schemas.json"
VENDORED = HERE / "fixtures" / "openai_schemas.json"


@lru_cache
def bundle() -> dict:
    return json.loads((SHARED if SHARED.exists() else VENDORED).read_text())


@lru_cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": bundle()["$defs"]})


def check(name: str, instance) -> None:
    """Raise if `instance` does not validate against the named official schema."""
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
