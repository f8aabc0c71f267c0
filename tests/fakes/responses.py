"""Answers in OpenAI's Responses format (https://platform.openai.com/docs/api-reference/responses),
as a provider row with `api = "openai_responses"` receives them."""
from __future__ import annotations

import json


def response(text: str = "Hello from Responses", input_tokens: int = 12, output_tokens: int = 4,
             cached: int = 0, reasoning: int = 0, status: str = "completed", call: dict | None = None) -> dict:
    output = [{"type": "reasoning", "id": "rs_up1", "summary": [], "encrypted_content": "gAAA"}] if reasoning else []
    if call:
        output.append({"type": "function_call", "id": "fc_up1", "call_id": "call_up1", "status": "completed", **call})
    else:
        output.append({"type": "message", "id": "msg_up1", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
    return {"id": "resp_upstream", "object": "response", "created_at": 1700000000, "status": status,
            "completed_at": 1700000001 if status == "completed" else None, "error": None,
            "incomplete_details": None if status == "completed" else {"reason": "max_output_tokens"},
            "instructions": None, "max_output_tokens": None, "model": "up-2026", "output": output,
            "parallel_tool_calls": True, "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
            "service_tier": "default", "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled", "metadata": {},
            "billing": {"payer": "developer"},
            "usage": {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
                      "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": reasoning},
                      "total_tokens": input_tokens + output_tokens}}


def stream(done: dict, pieces: list[str] | None = None) -> bytes:
    """The events OpenAI streams for `done` (a Response from `response`)."""
    n = iter(range(1000))

    def ev(kind: str, **data) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': next(n), **data})}\n\n".encode()
    shell = {**{k: v for k, v in done.items() if k != "usage"}, "status": "in_progress", "output": [],
             "completed_at": None}
    out = [ev("response.created", response=shell), ev("response.in_progress", response=shell)]
    for i, item in enumerate(done["output"]):
        if item["type"] != "message":
            out += [ev("response.output_item.added", output_index=i, item=item),
                    ev("response.output_item.done", output_index=i, item=item)]
            continue
        text = item["content"][0]["text"]
        out.append(ev("response.output_item.added", output_index=i, item={**item, "status": "in_progress", "content": []}))
        out.append(ev("response.content_part.added", item_id=item["id"], output_index=i, content_index=0,
                      part={"type": "output_text", "text": "", "annotations": [], "logprobs": []}))
        for piece in pieces or [text]:
            out.append(ev("response.output_text.delta", item_id=item["id"], output_index=i, content_index=0,
                          delta=piece, logprobs=[]))
        out.append(ev("response.output_text.done", item_id=item["id"], output_index=i, content_index=0, text=text,
                      logprobs=[]))
        out.append(ev("response.content_part.done", item_id=item["id"], output_index=i, content_index=0,
                      part=item["content"][0]))
        out.append(ev("response.output_item.done", output_index=i, item=item))
    terminal = {"completed": "response.completed", "incomplete": "response.incomplete"}[done["status"]]
    out.append(ev(terminal, response=done))
    return b"".join(out)
