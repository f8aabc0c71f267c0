"""OpenAI content parts, read once for the translating adapters: text, images, audio, files.

Each adapter turns a part into its own shape (a Gemini part, an Anthropic block, an Ollama
image); what a provider cannot take is a 400 naming the message, never dropped. The gateway
does not fetch URLs on a caller's behalf.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from core.errors import InvalidRequest

DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[\w.-]+)*;base64,(?P<data>.*)", re.S)
AUDIO_MIME = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "ogg": "audio/ogg",
              "aac": "audio/aac", "pcm16": "audio/pcm"}


@dataclass
class Part:
    """One content part: kind is text | image | audio | file; for media either `data` (base64,
    with its `mime`) or `url`."""

    kind: str
    text: str = ""
    mime: str = ""
    data: str = ""
    url: str = ""
    filename: str = ""
    where: str = ""  # messages[i].content[j], for errors naming it


def refuse(where: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, param=where)


def _media(ref: str, where: str, kind: str) -> Part:
    found = DATA_URL.fullmatch(ref)
    if found:
        return Part(kind, mime=found["mime"] or "application/octet-stream", data=found["data"])
    if ref.startswith(("https://", "http://")):
        return Part(kind, url=ref)
    raise refuse(where, f"{where}: an {kind} must be a data URL (data:<type>;base64,...) or an https URL")


def part_of(raw: dict, where: str) -> Part:
    """An OpenAI content part as a Part, or a 400 for a shape no provider can read."""
    kind = raw.get("type")
    if kind == "text":
        return Part("text", text=raw.get("text", ""))
    if kind == "image_url":
        ref = raw.get("image_url")
        ref = ref.get("url") if isinstance(ref, dict) else ref
        if not isinstance(ref, str):
            raise refuse(where, f"{where}: image_url.url must be a string")
        return _media(ref, where, "image")
    if kind == "input_audio":
        audio = raw.get("input_audio") or {}
        if not isinstance(audio.get("data"), str):
            raise refuse(where, f"{where}: input_audio.data must be base64 audio")
        return Part("audio", mime=AUDIO_MIME.get(audio.get("format"), "audio/wav"), data=audio["data"])
    if kind == "file":
        file = raw.get("file") or {}
        if not isinstance(file.get("file_data"), str):
            raise refuse(where, f"{where}: file parts need file.file_data as a data URL "
                                "(file ids are OpenAI's own storage)")
        found = _media(file["file_data"], where, "file")
        found.filename = file.get("filename") or ""
        return found
    raise refuse(where, f"{where}: content parts of type '{kind}' are not supported")


def parts_of(message: dict, index: int) -> list[Part]:
    """A message's content as parts (a plain string is one text part)."""
    content = message.get("content")
    where = f"messages[{index}].content"
    if content is None:
        return []
    if isinstance(content, str):
        return [Part("text", text=content, where=where)] if content else []
    found = []
    for i, raw in enumerate(content):
        part = part_of(raw, f"{where}[{i}]")
        part.where = f"{where}[{i}]"
        found.append(part)
    return found


def tool_call(call: dict, where: str) -> tuple[str, dict]:
    """An assistant message's tool call (checked by core.chat) as its function's name and its
    arguments as an object, which is how a translating provider takes them; a custom tool's call,
    or arguments that are not a JSON object, is a 400 naming it."""
    function = call.get("function")
    if call.get("type", "function") != "function" or not isinstance(function, dict):
        raise refuse(where, f"{where}: tool calls of type '{call.get('type')}' are OpenAI's own; "
                            "this model's provider takes function calls only")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError:
            arguments = None
    elif arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise refuse(f"{where}.function.arguments", f"{where}.function.arguments must be a JSON object: this "
                                                     "model's provider takes a call's arguments as an object")
    return function["name"], arguments
