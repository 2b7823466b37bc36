"""What an event's data may hold: nothing a client could fail to decode.

Clients receive an event as a protobuf JobEvent whose `data` is a google.protobuf.Struct, and
each level of JSON nesting costs up to three protobuf levels there (an object: Struct, its map
entry, Value; an array two: ListValue, Value). The protobuf parsers of C++, Java, C# and Python
(upb) refuse a message nested more than 100 levels deep by default (Go's limit is 10,000), so
data nested 34 levels deep already reaches no client. MAX_DEPTH keeps a JobEvent's data within
72 levels (73 for a Job's result inside a ListJobsResponse), leaving a quarter of the parsers'
budget to clients that carry an event inside messages of their own. Dispatcher's documented
envelopes nest three levels.

Strings must have a UTF-8 form: JSON's "\ud800" parses as a lone surrogate, which neither a
protobuf string nor a log line can hold.

Numbers must be finite: a Struct holds an infinity or NaN, but the JSON form of a message
(grpcurl, every language's JSON mapping) has no way to write one, and refuses the message.

MAX_VALUES bounds the encoded size: a number costs 2 bytes of JSON in an array and 11 in a
Struct, so a 1 MiB webhook of numbers would become an event over the 4 MiB a gRPC client
receives by default. With at most 10,000 values an event is at most ~120 KB larger than its JSON.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Collection

from .model import JSON, UpstreamFailure

log = logging.getLogger("dispatcher_gateway.core")

MAX_DEPTH = 24
"""Arrays and objects nested in an event's data, the data itself counting as one."""
MAX_VALUES = 10_000
"""Values (members of objects and items of arrays, at any depth) in an event's data."""
UNDELIVERABLE_MARK = "undeliverable, not kept"


def has_utf8_form(text: str) -> bool:
    """Whether the text has a UTF-8 form (no lone surrogate); isascii() is a flag, not a scan."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def data_problem(data: JSON) -> str | None:
    """Why no client could be sent an event with this data, or None when every client can.

    Iterative, so that data nested deeper than Python's recursion limit is measured too, and
    stops at the first problem, so that its cost is bounded by MAX_VALUES."""
    values = 0
    pending: list[tuple[object, int]] = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        children: Collection[object]
        if isinstance(value, str):
            if not has_utf8_form(value):
                return "holds an unpaired UTF-16 surrogate"
            continue
        if isinstance(value, dict):
            if not all(map(has_utf8_form, value)):
                return "holds an unpaired UTF-16 surrogate"
            children = value.values()
        elif isinstance(value, list):
            children = value
        elif isinstance(value, int) and not isinstance(value, bool):
            # A Struct holds numbers as doubles: an integer beyond a double's range has none.
            try:
                float(value)
            except OverflowError:
                return "holds an integer too large for a double"
            continue
        elif isinstance(value, float):
            # JSON's 1e400 parses as an infinity: a Struct holds it, its JSON form cannot.
            if not math.isfinite(value):
                return "holds a number too large for a double, or NaN"
            continue
        else:
            continue
        if depth > MAX_DEPTH:
            return f"nests deeper than {MAX_DEPTH} levels"
        values += len(children)
        if values > MAX_VALUES:
            return f"holds more than {MAX_VALUES} values"
        pending.extend((child, depth + 1) for child in children)
    return None


def deliverable_answer(body: JSON, what: str) -> JSON:
    """The upstream's answer, or in its place a small marker when no client could be sent it:
    recorded as it came, a sync answer would be the job's result, and make every GetJob and
    ListJobs that carries the job fail, not only its event."""
    problem = data_problem(body)
    if problem is None:
        return body
    log.error("the upstream's answer (%s) %s: kept as %r", what, problem, UNDELIVERABLE_MARK)
    return {"error": f"the upstream's answer {problem}: {UNDELIVERABLE_MARK}"}


def deliverable_failure(failure: UpstreamFailure, what: str) -> UpstreamFailure:
    """The failure, its details (the upstream's error body) replaced by a small marker when no
    client could be sent them, as they are in the job's error and the event that records it."""
    problem = data_problem(failure.to_json())
    if problem is None:
        return failure
    log.error("the upstream's error body (%s) %s: kept as %r", what, problem, UNDELIVERABLE_MARK)
    details = {"error": f"the upstream's error body {problem}: {UNDELIVERABLE_MARK}"}
    return dataclasses.replace(failure, details=details)
