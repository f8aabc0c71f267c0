"""OpenTelemetry traces (SPEC §17): with OTEL_EXPORTER_OTLP_ENDPOINT set, one trace per call on
the chat, Messages, Responses and embeddings doors, exported over OTLP/HTTP.

The call's span (kind SERVER) carries the GenAI semantic-convention attributes
(`gen_ai.operation.name`, `gen_ai.system`, `gen_ai.request.model`, `gen_ai.response.model`,
`gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, `gen_ai.response.id`) and its
children time the steps: admission, hold, the provider call, settle. Spans go to a
BatchSpanProcessor, whose own thread exports them: a call never waits on the exporter. The
pipeline opens a step with `step(record, name)` on the call's outcome record (where the call's
span is kept), so it needs no Flask and works inside a stream's body too; the request hooks that
open and close the call's span are the web layer's (its tracing module).
"""
from __future__ import annotations

import contextlib

SYSTEMS = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini", "ollama": "ollama",
           "openai_responses": "openai"}  # gen_ai.system per wire protocol (the row's provider is shown too)
SPAN, TRACER = "_span", "_tracer"


class Tracing:
    """A tracer provider of this app's own (not the process-wide one) exporting to `endpoint`."""

    def __init__(self, endpoint: str, service_name: str):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        url = endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"  # the variable names the collector's base, as the SDK reads it
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url, timeout=5)))
        self.tracer = self.provider.get_tracer("tollgate")

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self.provider.shutdown()


@contextlib.contextmanager
def step(record: dict | None, name: str, **attributes):
    """A child span of the call's span for one step of the pipeline (nothing when not traced)."""
    parent = (record or {}).get(SPAN)
    if parent is None:
        yield None
        return
    from opentelemetry.trace import Status, StatusCode, set_span_in_context

    span = record[TRACER].start_span(name, context=set_span_in_context(parent), attributes=attributes)
    try:
        yield span
    except BaseException as exc:
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.set_attribute("error.type", getattr(exc, "code", None) or type(exc).__name__)
        raise
    finally:
        span.end()


def end_span(span, record: dict, model, status: int, operation: str) -> None:
    """The call's attributes, known once its body is done, and the end of its span."""
    from opentelemetry.trace import Status, StatusCode

    try:
        attrs = {"http.response.status_code": status, "tollgate.request_id": record.get("request_id") or ""}
        if model is not None:
            attrs.update({"gen_ai.system": SYSTEMS.get(model.api, model.api), "gen_ai.request.model": model.name,
                          "gen_ai.provider.name": model.provider})
            span.update_name(f"{operation} {model.name}")
        if record.get("model"):
            attrs["gen_ai.response.model"] = record["model"]
        if record.get("request_id"):
            attrs["gen_ai.response.id"] = record["request_id"]
        if "prompt_tokens" in record:
            attrs.update({"gen_ai.usage.input_tokens": record["prompt_tokens"],
                          "gen_ai.usage.output_tokens": record.get("completion_tokens", 0),
                          "tollgate.cost_micro": record.get("cost_micro", 0)})
        if record.get("ttft_ms") is not None:
            attrs["tollgate.ttft_ms"] = record["ttft_ms"]
        error = record.get("error")
        if error or status >= 400:
            attrs["error.type"] = error or str(status)
            span.set_status(Status(StatusCode.ERROR, error or str(status)))
        span.set_attributes(attrs)
    finally:
        span.end()
