"""The JSON log line's fields (cli/logs.py), and tracing's switch (tracing.py): off unless
OTEL_TRACES_EXPORTER names an exporter."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from dispatcher_gateway.cli.logs import ContextFields, formatter
from dispatcher_gateway.core import logfields
from dispatcher_gateway.tracing import ConfigError, Tracing


def json_line(message: str, **extra: str) -> dict[str, str]:
    record = logging.LogRecord(
        "dispatcher_gateway.test", logging.INFO, __file__, 1, message, (), None
    )
    for name, value in extra.items():
        setattr(record, name, value)
    assert ContextFields().filter(record)
    line = formatter("json").format(record)
    assert "\n" not in line
    parsed: dict[str, str] = json.loads(line)
    return parsed


def test_a_json_line_names_the_job_client_dispatch_and_trace_in_hand() -> None:
    provider = TracerProvider()
    with (
        provider.get_tracer("test").start_as_current_span("work") as span,
        logfields.about(job_id="job_1", client="alice", dispatch_id="disp_1"),
    ):
        line = json_line("sent")
    assert line["message"] == "sent"
    assert line["level"] == "INFO"
    assert line["logger"] == "dispatcher_gateway.test"
    assert line["time"]
    assert line["job_id"] == "job_1"
    assert line["client"] == "alice"
    assert line["dispatch_id"] == "disp_1"
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")


def test_a_json_line_leaves_out_what_is_not_known() -> None:
    line = json_line("started")
    assert not {"job_id", "client", "dispatch_id", "trace_id"} & set(line)


def test_a_field_the_call_passed_wins_over_the_context() -> None:
    with logfields.about(job_id="job_1"):
        assert json_line("x", job_id="job_2")["job_id"] == "job_2"


def test_tracing_is_off_unless_an_exporter_is_named() -> None:
    assert not Tracing.from_env({}).enabled
    assert not Tracing.from_env({"OTEL_TRACES_EXPORTER": "none"}).enabled
    assert not Tracing.from_env(
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
    ).enabled
    on = Tracing.from_env({"OTEL_TRACES_EXPORTER": "console"})
    try:
        assert on.enabled
        assert on.provider is not None
        assert on.provider.resource.attributes["service.name"] == "dispatcher-gateway"
    finally:
        on.shutdown()


def test_an_unknown_exporter_is_refused() -> None:
    with pytest.raises(ConfigError, match="zipkin"):
        Tracing.from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
