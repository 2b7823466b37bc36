"""What a log line is about: the job, client and dispatch in hand, kept in a context variable
that the log formatter reads (cli/logs.py: fields of each JSON line). Set where the work on one
job is done (the outbox's submission, a webhook's recording, a dispatch call), so that a line
logged anywhere below says which job it concerns without each call passing it on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Final

_NOTHING: Final[Mapping[str, str]] = MappingProxyType({})
FIELDS: ContextVar[Mapping[str, str]] = ContextVar("log_fields", default=_NOTHING)
"""job_id, client, dispatch_id: those known of the work in hand."""


@contextlib.contextmanager
def about(**fields: str) -> Iterator[None]:
    """Within: log lines carry these fields (empty ones are left out), over those already set."""
    token = FIELDS.set({**FIELDS.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        FIELDS.reset(token)


def known(**fields: str) -> None:
    """Add fields to the current context for the rest of it (a task's, a call's): for what is
    learnt part way, such as a dispatch's new job id."""
    FIELDS.set({**FIELDS.get(), **{k: v for k, v in fields.items() if v}})
