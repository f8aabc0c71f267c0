"""The request hooks of traces (SPEC §17): a span per call on the chat, Messages, Responses and
embeddings doors, opened before the view and closed when the response is done (a stream's when
its body closes); the spans and steps themselves are service/pipeline/traces.py's."""
from __future__ import annotations

from flask import current_app, g, request

from service.pipeline import traces
from service.pipeline.traces import SPAN, TRACER, Tracing

DOORS = {"chat.completions": "chat", "messages.create": "chat", "responses.create": "chat",
         "embeddings.create": "embeddings"}


def _begin() -> None:
    tracing = current_app.extensions.get("tollgate_traces")
    if tracing is None or request.endpoint not in DOORS:
        return
    from opentelemetry.trace import SpanKind

    operation = DOORS[request.endpoint]
    span = tracing.tracer.start_span(operation, kind=SpanKind.SERVER, attributes={
        "gen_ai.operation.name": operation, "http.request.method": request.method, "url.path": request.path})
    g.setdefault("outcome", {}).update({SPAN: span, TRACER: tracing.tracer})


def _end(response):
    record = g.get("outcome") or {}
    span = record.get(SPAN)
    if span is None:
        return response
    model = g.get("model")
    status = response.status_code
    operation = DOORS.get(request.endpoint, "chat")
    if response.is_streamed:
        response.call_on_close(lambda: traces.end_span(span, record, model, status, operation))
    else:
        traces.end_span(span, record, model, status, operation)
    return response


def init_app(app) -> None:
    """Trace calls when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    endpoint = app.config.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return
    app.extensions["tollgate_traces"] = Tracing(endpoint, app.config.get("OTEL_SERVICE_NAME", "tollgate"))
    app.before_request(_begin)
    app.after_request(_end)
