"""A fake model for agent runs, speaking OpenAI Chat Completions, Anthropic Messages or Gemini
(each streamed or not): asked with a tool it is told to use, it calls that tool; once the tool's
result comes back it answers with text quoting what the result held. It counts its usage, so a
test can hold the ledger to it."""
from __future__ import annotations

import json
import re
import threading

from werkzeug import Request, Response

from tests.fakes import responses as fake_responses

PROMPT, COMPLETION = 40, 8  # the usage the fake reports for every answer


class AgentModel:
    def __init__(self, api: str, tool: str, args: dict, marker: str):
        self.api, self.tool, self.args, self.marker = api, tool, args, marker
        self.lock = threading.Lock()
        self.answers: list[dict] = []  # what was asked, and what was answered

    # -- what the request holds ----------------------------------------------------------------

    def _offered(self, body: dict) -> bool:
        if self.api == "openai":
            return any((t.get("function") or {}).get("name") == self.tool for t in body.get("tools") or ())
        if self.api in ("anthropic", "openai_responses"):
            return any(t.get("name") == self.tool for t in body.get("tools") or ())
        return any(d.get("name") == self.tool for t in body.get("tools") or ()
                   for d in t.get("functionDeclarations") or ())

    def _results(self, body: dict) -> str:
        """Every tool result in the conversation, as text."""
        if self.api == "openai":
            return " ".join(str(m.get("content")) for m in body.get("messages") or () if m.get("role") == "tool")
        if self.api == "openai_responses":
            return " ".join(json.dumps(i.get("output")) for i in body.get("input") or ()
                            if isinstance(i, dict) and i.get("type") == "function_call_output")
        if self.api == "anthropic":
            return " ".join(json.dumps(b.get("content")) for m in body.get("messages") or ()
                            if isinstance(m.get("content"), list) for b in m["content"] if b.get("type") == "tool_result")
        return " ".join(json.dumps(p["functionResponse"]) for c in body.get("contents") or ()
                        for p in c.get("parts") or () if "functionResponse" in p)

    def reply(self, body: dict) -> tuple[str | None, str]:
        """(the tool to call or None, the text to say)."""
        results = self._results(body)
        if results:
            found = re.search(re.escape(self.marker), results)
            return None, f"The fake provider saw: {found.group(0) if found else 'no marker'}."
        if self._offered(body):
            return self.tool, ""
        return None, "The fake provider has no tool to call."

    # -- the answer in each format -------------------------------------------------------------

    def handler(self, request: Request) -> Response:
        body = request.get_json()
        stream = body.get("stream") is True or "streamGenerateContent" in request.path
        tool, text = self.reply(body)
        with self.lock:
            self.answers.append({"stream": stream, "tool": tool, "text": text, "body": body})
        make = getattr(self, f"_{self.api}")
        if self.api == "openai_responses":
            answer = make(tool, text)
            if stream:
                return Response(fake_responses.stream(answer, re.findall(r"\S+\s*", text) or None),
                                mimetype="text/event-stream")
            return Response(json.dumps(answer), content_type="application/json")
        if stream:
            return Response(make(tool, text, True), mimetype="text/event-stream")
        return Response(json.dumps(make(tool, text, False)), content_type="application/json")

    def _openai(self, tool, text, stream):
        call = {"id": "call_fake1", "type": "function",
                "function": {"name": tool, "arguments": json.dumps(self.args)}} if tool else None
        finish = "tool_calls" if tool else "stop"
        usage = {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION, "total_tokens": PROMPT + COMPLETION}
        if not stream:
            message = {"role": "assistant", "content": None if tool else text}
            if call:
                message["tool_calls"] = [call]
            return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000, "model": "up",
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                    "usage": usage}

        def chunk(delta, finish=None, usage=None):
            out = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": "up",
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
                   if usage is None else []}
            if usage is not None:
                out["usage"] = usage
            return b"data: " + json.dumps(out).encode() + b"\n\n"
        pieces = [chunk({"role": "assistant", "content": ""})]
        if call:
            pieces.append(chunk({"tool_calls": [{"index": 0, **call}]}))
        else:
            pieces += [chunk({"content": word}) for word in re.findall(r"\S+\s*", text)]
        return pieces + [chunk({}, finish), chunk({}, usage=usage), b"data: [DONE]\n\n"]

    def _openai_responses(self, tool, text):
        call = {"name": tool, "arguments": json.dumps(self.args)} if tool else None
        return fake_responses.response(text, PROMPT, COMPLETION, call=call)

    def _anthropic(self, tool, text, stream):
        block = {"type": "tool_use", "id": "toolu_fake1", "name": tool, "input": self.args} if tool else \
            {"type": "text", "text": text}
        stop = "tool_use" if tool else "end_turn"
        if not stream:
            return {"id": "msg_fake", "type": "message", "role": "assistant", "model": "up", "content": [block],
                    "stop_reason": stop, "stop_sequence": None,
                    "usage": {"input_tokens": PROMPT, "output_tokens": COMPLETION}}

        def ev(kind, **data):
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()
        start = {**block, "input": {}} if tool else {"type": "text", "text": ""}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(self.args)} if tool else \
            {"type": "text_delta", "text": text}
        return [ev("message_start", message={"id": "msg_fake", "type": "message", "role": "assistant", "model": "up",
                                             "content": [], "stop_reason": None, "stop_sequence": None,
                                             "usage": {"input_tokens": PROMPT, "output_tokens": 1}}),
                ev("content_block_start", index=0, content_block=start),
                ev("content_block_delta", index=0, delta=delta),
                ev("content_block_stop", index=0),
                ev("message_delta", delta={"stop_reason": stop, "stop_sequence": None},
                   usage={"output_tokens": COMPLETION}),
                ev("message_stop")]

    def _gemini(self, tool, text, stream):
        part = {"functionCall": {"name": tool, "args": self.args}} if tool else {"text": text}
        answer = {"candidates": [{"content": {"parts": [part], "role": "model"}, "finishReason": "STOP", "index": 0}],
                  "usageMetadata": {"promptTokenCount": PROMPT, "candidatesTokenCount": COMPLETION,
                                    "totalTokenCount": PROMPT + COMPLETION}, "modelVersion": "up"}
        return [b"data: " + json.dumps(answer).encode() + b"\r\n\r\n"] if stream else answer


PATHS = {"openai": ["/v1/chat/completions"], "openai_responses": ["/v1/responses"], "anthropic": ["/v1/messages"],
         "gemini": ["/v1beta/models/up:generateContent", "/v1beta/models/up:streamGenerateContent"]}


def serve(upstream, api: str, tool: str, args: dict, marker: str) -> AgentModel:
    """Answer the row of wire protocol `api` (behind the `gateway` fixture's upstream) as an agent's model."""
    model = AgentModel(api, tool, args, marker)
    for path in PATHS[api]:
        upstream.expect_request(path).respond_with_handler(model.handler)
    return model
