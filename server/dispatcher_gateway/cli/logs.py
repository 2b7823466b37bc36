"""Log lines of the long-running commands (serve, sandbox): to standard error, one per line,
as text (GATEWAY_LOG_FORMAT=text, the default) or one JSON object per line (json), whose fields
name the job, client, dispatch and trace a line is about when they are known."""

from __future__ import annotations

import logging
import sys
from typing import Final

from pythonjsonlogger.json import JsonFormatter

from ..core.logfields import FIELDS
from ..tracing import current_trace_id

TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
JSON_FIELDS: Final = "%(levelname)s %(name)s %(message)s"
JSON_RENAMED: Final = {"levelname": "level", "name": "logger"}
CONTEXT_FIELDS: Final = ("job_id", "client", "dispatch_id", "trace_id")


class ContextFields(logging.Filter):
    """Adds to each record what its context knows: the job, client and dispatch in hand
    (core/logfields.py) and the current trace (with tracing on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        known = dict(FIELDS.get())
        trace_id = current_trace_id()
        if trace_id:
            known["trace_id"] = trace_id
        for name, value in known.items():
            # A field the call passed itself (logging's `extra`) wins.
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class WorkerField(logging.Filter):
    """Adds `worker`, the index of the worker process a line comes from (GATEWAY_WORKERS)."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


def formatter(log_format: str, worker: int | None = None) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(JSON_FIELDS, rename_fields=JSON_RENAMED, timestamp="time")
    if worker is not None:
        return logging.Formatter(TEXT_FORMAT.replace("%(name)s", "worker %(worker)s %(name)s"))
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, log_format: str = "text", worker: int | None = None) -> None:
    """`worker`: this process is that worker of a gateway's (each line says so)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format, worker))
    handler.addFilter(ContextFields())
    if worker is not None:
        handler.addFilter(WorkerField(worker))
    logging.basicConfig(level=level, handlers=[handler])
    # One line per HTTP request is the upstream client's job, at DEBUG; httpx's own is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # uvicorn announces each of its servers starting and stopping; the gateway says it once.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
