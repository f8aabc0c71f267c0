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


RESPONSES = HERE / "fixtures" / "responses_schemas.json"  # OpenAI's published Responses schemas


@lru_cache
def responses_validator(name: str) -> Draft202012Validator:
    defs = json.loads(RESPONSES.read_text())["$defs"]
    return Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": defs})


def check_responses(name: str, instance) -> None:
    """Raise if `instance` does not validate against OpenAI's published Responses schema `name`
    (Response, ResponseStreamEvent, CreateResponse …)."""
    errors = sorted(responses_validator(name).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message[:300]}" for e in errors[:5])


def responses_fields(name: str = "CreateResponse") -> set[str]:
    """Every property a published Responses schema defines (through its allOf chain)."""
    defs = json.loads(RESPONSES.read_text())["$defs"]

    def walk(schema: dict) -> set[str]:
        found = set(schema.get("properties", {}))
        for part in schema.get("allOf", []):
            found |= walk(defs[part["$ref"].rsplit("/", 1)[1]] if "$ref" in part else part)
        return found
    return walk(defs[name])
