"""Hypothesis strategies for what reaches the gateway's edges from outside: webhook requests
(token, body, signature headers, media type, replays) and the requests of DispatchService.

Inputs are drawn as plans where time matters: a webhook's signature is made when it is sent
(its timestamp is `now + offset`), so a shrunk example replayed a minute later is the same input.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.protobuf import struct_pb2, text_format
from google.protobuf.message import Message
from hypothesis import strategies as st

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher_gateway.core import states
from dispatcher_gateway.core.eventdata import MAX_DEPTH, MAX_VALUES
from dispatcher_gateway.webhooks import DEFAULT_MAX_BODY
from tests.support.requests import request_for

M = TypeVar("M", bound=Message)
T = TypeVar("T")

SHOWN = 500
"""Characters of an input shown in a failure report; the `@reproduce_failure` blob Hypothesis
prints with it gives the whole input back."""


def shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}... ({len(text):,} characters)"


class ShortRepr:
    """Shown briefly in Hypothesis' reports: inputs of a megabyte would flood them."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@dataclass(frozen=True)
class Sent(ShortRepr, Generic[M]):
    """A request message, as sent."""

    message: M

    def __repr__(self) -> str:
        body = text_format.MessageToString(self.message, as_one_line=True)
        return f"{type(self.message).__name__}({shown(body)})"


def mostly(
    usual: st.SearchStrategy[T], odd: st.SearchStrategy[T], times: int = 3
) -> st.SearchStrategy[T]:
    """`usual` `times` as often as `odd`: most inputs get past the first checks, to the deeper
    ones."""
    # Not one_of(usual, usual, ...): it would draw each distinct strategy as often.
    return st.sampled_from([usual] * times + [odd]).flatmap(lambda chosen: chosen)


# Scalars and text

HEADER_SAFE = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
"""What an HTTP/1.1 client may send in a header value (visible ASCII, space, obs-text)."""
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
"""Any code point, lone surrogates included."""
TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "é", "💥", "\u202e", "a\nb", "null", "0", "-1", "1e999"]),
    # Large, cheap to make: Hypothesis would take seconds to draw a megabyte character by
    # character.
    st.builds(lambda n, c: c * n, st.integers(1_000, 300_000), st.sampled_from("xé💥")),
)
"""Text a protobuf string field can carry (valid UTF-8)."""

INTEGERS = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.sampled_from([0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63), 2**64, 10**308]),
    # Beyond any double: no Struct can hold them.
    st.sampled_from([10**309, -(10**309), 2**1100]),
)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), INTEGERS, FLOATS, TEXT, ANY_TEXT)
JSON_KEYS = st.one_of(TEXT, ANY_TEXT)


def nest(levels: int, leaf: Any, kind: str) -> Any:
    """`leaf` inside `levels - 1` arrays or objects (alternating for `mixed`)."""
    value = leaf
    for i in range(levels - 1):
        as_list = kind == "list" or (kind == "mixed" and i % 2)
        value = [value] if as_list else {"k": value}
    return value


def json_values(
    scalars: st.SearchStrategy[Any] = JSON_SCALARS,
    keys: st.SearchStrategy[str] = JSON_KEYS,
) -> st.SearchStrategy[Any]:
    """JSON as Python's json module gives it: small and odd, deep (around the gateway's limit,
    beyond clients' parsers, up to 600 levels; raw bodies go deeper), wide (around the 10,000
    values an event may hold)."""
    small = st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(keys, inner, max_size=4),
        ),
        max_leaves=12,
    )
    deep = st.builds(
        nest,
        st.one_of(
            st.integers(1, MAX_DEPTH + 12),
            st.sampled_from([MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 34, 100, 600]),
        ),
        small,
        st.sampled_from(["list", "dict", "mixed"]),
    )
    wide = st.builds(
        lambda n, as_dict: {str(i): i for i in range(n)} if as_dict else list(range(n)),
        st.integers(MAX_VALUES - 3, MAX_VALUES + 3),
        st.booleans(),
    )
    return mostly(small, st.one_of(deep, wide), times=1)


READ_KEYS = (
    "code",
    "message",
    "reason",
    "status",
    "http_status",
    "details",
    "error",
    "time",
    "endpoint",
    "mode",
    "latency",
    "request_id",
    "error_code",
    "dispatchId",
)
"""The fields core reads from an event's data (a failure, an upstream attempt)."""
JSON_OBJECTS = mostly(
    st.dictionaries(
        st.sampled_from(READ_KEYS), mostly(JSON_SCALARS, json_values()), min_size=1, max_size=3
    ),
    st.dictionaries(st.one_of(TEXT, ANY_TEXT), json_values(), max_size=4),
    times=1,
)


def dumps(value: Any, *, ascii_only: bool = True) -> bytes:
    """JSON as a sender could write it; lone surrogates as their \\u escapes, or raw."""
    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


# Webhooks

OUR_EVENTS = sorted(
    {
        states.QUEUED,
        states.SUBMITTED,
        states.FAILED,
        states.ATTEMPT,
        states.COMPLETED,
        states.UNDELIVERABLE,
        states.OVERDUE,
    }
)
EVENT_NAMES = mostly(
    st.sampled_from(sorted(states.EVENT_STATES) + OUR_EVENTS),
    st.one_of(
        st.text(min_size=1, max_size=30),
        st.text(st.characters(exclude_categories=()), min_size=1, max_size=10),
        st.builds(lambda n: "e" * n, st.integers(1_000, 200_000)),
        # Not a non-empty string: refused.
        st.sampled_from(["", None, 0, [], {}]),
    ),
    times=2,
)
TIMESTAMPS = st.one_of(
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.datetimes().map(lambda d: d.isoformat()),
    st.builds(
        lambda d, offset: d.isoformat() + offset,
        st.datetimes(),
        st.sampled_from(["+00:00", "+23:59", "-23:59", "+01:00"]),
    ),
    st.sampled_from(["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59.999999-23:59"]),
    st.sampled_from(["1969-12-31T23:59:59.5Z", "1900-01-01T00:00:00.123Z"]),
    TEXT,
    INTEGERS,
)


@dataclass(frozen=True)
class Signing:
    """How a webhook is signed, made into headers when it is sent."""

    scheme: str
    """dispatcher, standard, untimed (Dispatcher's without a timestamp), none, garbage."""
    secrets: tuple[str, ...]
    """'right' and 'wrong' stand for the gateway's secret and another."""
    offset: int = 0
    """Seconds the signed timestamp is away from now."""
    odd_timestamp: str | None = None
    """A timestamp header that is not one (signed as it is)."""
    webhook_id: str | None = None
    tamper: bool = False
    """Sign another body than the one sent."""
    garbage: bytes = b""


WEBHOOK_IDS = st.one_of(
    st.none(),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
    st.text(HEADER_SAFE, min_size=1, max_size=20),
    st.builds(lambda n: "w" * n, st.integers(250, 5_000)),
)
SIGNINGS = mostly(
    st.builds(
        Signing,
        scheme=st.sampled_from(["dispatcher"] * 3 + ["standard"]),
        secrets=st.sampled_from([("right",)] * 3 + [("wrong", "right")]),
        offset=st.one_of(st.just(0), st.integers(-299, 299)),
        webhook_id=WEBHOOK_IDS,
    ),
    st.builds(
        Signing,
        scheme=st.sampled_from(["dispatcher", "standard", "untimed", "none", "garbage"]),
        secrets=st.sampled_from([("right",), ("wrong",), ("wrong", "right"), ()]),
        offset=st.one_of(st.just(0), st.integers(-(10**12), 10**12), st.sampled_from([-301, 301])),
        odd_timestamp=st.one_of(
            st.none(),
            st.text(HEADER_SAFE, max_size=20),
            st.sampled_from(["-1", "1e9", "0x10", "١٢٣", "9" * 40, "+1700000000", ""]),
        ),
        webhook_id=WEBHOOK_IDS,
        tamper=st.booleans(),
        garbage=st.binary(max_size=100).map(
            lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F)
        ),
    ),
)

CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "application/cloudevents+json",
            "application/json;charset=latin-1",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "",
        ]
    ),
    st.none(),
    st.text(HEADER_SAFE, max_size=30),
)
HOP_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "host", "connection", "content-type", "expect"}
)
EXTRA_HEADERS = mostly(
    st.just([]),
    st.lists(
        st.tuples(
            st.text(st.sampled_from(TOKEN_CHARS), min_size=1, max_size=20).filter(
                lambda n: n.lower() not in HOP_HEADERS
            ),
            mostly(
                st.text(HEADER_SAFE, max_size=40).map(lambda t: t.strip().encode("latin-1")),
                # Around the listener's 16 KiB of headers, and well beyond.
                st.builds(lambda n: b"h" * n, st.integers(8_000, 70_000)),
            ),
        ),
        min_size=1,
        max_size=3,
    ),
)


FRESH = -1


@dataclass(frozen=True, repr=False)
class WebhookInput(ShortRepr):
    token: int | str
    """An index into the known jobs' tokens (FRESH: a job dispatched for this webhook, so that
    it is not finished yet), or a path segment of its own."""
    body: bytes
    signing: Signing
    content_type: str | None
    extra_headers: list[tuple[str, bytes]] = field(default_factory=list)
    replay: str | None = None
    """Once recorded, sent again: as it was (`same`), under a new id, or without one."""

    def __repr__(self) -> str:
        return (
            f"WebhookInput(token={shown(self.token)}, body={shown(self.body)}, "
            f"signing={shown(self.signing)}, content_type={shown(self.content_type)}, "
            f"extra_headers={shown(self.extra_headers)}, replay={self.replay!r})"
        )


def envelopes(dispatch_ids: Sequence[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"event": EVENT_NAMES, "data": mostly(JSON_OBJECTS, json_values())},
        optional={
            "timestamp": TIMESTAMPS,
            "dispatchId": st.one_of(st.sampled_from(list(dispatch_ids) or [""]), JSON_SCALARS),
            "service": JSON_SCALARS,
            "provider": JSON_SCALARS,
        },
    )


def padded(envelope: dict[str, Any], size: int) -> bytes:
    """The envelope grown to about `size` bytes."""
    body = dumps(envelope)
    return dumps({**envelope, "padding": "p" * max(0, size - len(body) - 16)})


def webhook_bodies(dispatch_ids: Sequence[str]) -> st.SearchStrategy[bytes]:
    envelope = envelopes(dispatch_ids)
    return st.one_of(
        envelope.map(dumps),
        envelope.map(dumps),
        envelope.map(dumps),
        envelope.map(lambda e: dumps(e, ascii_only=False)),
        st.builds(padded, envelope, st.integers(DEFAULT_MAX_BODY - 64, DEFAULT_MAX_BODY + 64)),
        envelope.map(lambda e: b"\xef\xbb\xbf" + dumps(e)),
        envelope.map(lambda e: json.dumps(e).encode("utf-16")),
        envelope.map(lambda e: dumps(e)[: len(dumps(e)) // 2]),
        json_values().map(dumps),
        st.binary(max_size=200),
        st.sampled_from(
            [
                b'{"event": "letter_created", "data": NaN}',
                b'{"event": "letter_created", "data": {"n": Infinity}}',
                b'{"event": "a", "event": "letter_delivered", "data": {}}',
                b'{"event": "\\ud800", "data": {}}',
                b'{"event": "x", "data": {"s": "\\udfff\\ud800"}}',
                b'{"event": "x", "data": 1e400}',
                b'{"event": "x", "data": {"n": -1e400}}',
                b"[" * 100_000,
                b"",
                b"null",
            ]
        ),
    )


def webhook_inputs(token_count: int, dispatch_ids: Sequence[str]) -> st.SearchStrategy[Any]:
    tokens = mostly(
        st.one_of(st.just(FRESH), st.integers(0, token_count - 1)),
        st.one_of(
            # Forged: a job id with a wrong MAC, a token of nothing, any text.
            st.sampled_from(["job_x.AAAAAAAAAAAAAAAAAAAAAA", "job_x", ".", "..", "%2F", "a/b"]),
            st.text(max_size=30),
            st.builds(lambda n: "t" * n, st.integers(1_000, 20_000)),
        ),
        times=5,
    )
    return st.builds(
        WebhookInput,
        token=tokens,
        body=webhook_bodies(dispatch_ids),
        signing=SIGNINGS,
        content_type=mostly(st.just("application/json"), CONTENT_TYPES, times=5),
        extra_headers=EXTRA_HEADERS,
        replay=st.sampled_from([None, None, "same", "new-id", "no-id"]),
    )


# gRPC requests

ENUM_VALUES = st.integers(-(2**31), 2**31 - 1)
SERVICES = mostly(st.sampled_from(list(pb.Service.values())[1:]), ENUM_VALUES)
MODES = mostly(st.sampled_from(list(pb.Mode.values())), ENUM_VALUES)
INT64 = mostly(st.integers(1, 3), st.one_of(st.integers(-(2**63), 2**63 - 1), st.just(0)))
# What a client can put in a Struct: no lone surrogates (protobuf strings are UTF-8), but NaN and
# the infinities.
STRUCT_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(),  # NaN and infinities: a Struct holds them, JSON cannot
    TEXT,
)


def struct_of(value: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value if isinstance(value, dict) else {"v": value})
    return struct


STRUCTS = st.one_of(
    st.just({}),
    json_values(STRUCT_SCALARS, TEXT).filter(lambda v: not _too_deep_for_python(v)),
    st.dictionaries(TEXT, json_values(STRUCT_SCALARS, TEXT), max_size=3).filter(
        lambda v: not _too_deep_for_python(v)
    ),
).map(struct_of)


def _too_deep_for_python(value: Any, limit: int = 100) -> bool:
    """Struct.update recurses, three frames a level: beyond 100 levels (far beyond the 32 the
    gateway decodes) it could exhaust the stack of the fuzzer's thread."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return True
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        pending.extend((child, depth + 1) for child in children)
    return False


METADATA = mostly(
    st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=10), max_size=2),
    st.one_of(
        st.dictionaries(TEXT, TEXT, max_size=4),
        st.builds(lambda n: {f"k{i}": "v" for i in range(n)}, st.integers(60, 70)),
    ),
)
IDEMPOTENCY_KEYS = st.one_of(st.just(""), st.sampled_from(["k1", "k2", "k3"]), TEXT)
STRINGS = st.one_of(st.sampled_from(["ada@example.com", "+33600000000", "FR", "x"]), TEXT)


def _set(field_name: str) -> Callable[[pb.DispatchRequest, Any], None]:
    def apply(request: pb.DispatchRequest, value: Any) -> None:
        setattr(request, field_name, value)

    return apply


def _options(request: pb.DispatchRequest, value: tuple[str, list[str]]) -> None:
    """Typed options with odd strings, in whichever block is named."""
    block, texts = value
    first = texts[0] if texts else ""
    if block == "email":
        request.email.sender.email = first
        request.email.to.add(email=first, name=texts[-1] if texts else "")
        request.email.subject = texts[-1] if texts else ""
    elif block == "sms":
        request.sms.to.extend(texts)
        request.sms.text = first
    elif block == "postal":
        request.postal.to.name = first
        request.postal.to.country = texts[-1] if texts else ""
    elif block == "esign":
        request.esign.document_name = first
        request.esign.signers.add(email=first)
    else:
        request.invoicing.document_type = first


def _chain(request: pb.DispatchRequest, value: list[int]) -> None:
    del request.chain[:]
    request.chain.extend(value)


MUTATIONS: dict[str, tuple[st.SearchStrategy[Any], Callable[[pb.DispatchRequest, Any], None]]] = {
    "service": (SERVICES, _set("service")),
    "chain": (st.lists(SERVICES, max_size=3), _chain),
    "mode": (MODES, _set("mode")),
    "template.id": (INT64, lambda r, v: setattr(r.template, "id", v)),
    "template.data": (STRUCTS, lambda r, v: r.template.data.CopyFrom(v)),
    "extra": (STRUCTS, lambda r, v: r.extra.CopyFrom(v)),
    "metadata": (METADATA, lambda r, v: r.metadata.update(v)),
    "idempotency_key": (IDEMPOTENCY_KEYS, _set("idempotency_key")),
    "provider_name": (STRINGS, _set("provider_name")),
    "options": (
        st.tuples(
            st.sampled_from(["email", "sms", "postal", "esign", "invoicing"]),
            st.lists(STRINGS, max_size=3),
        ),
        _options,
    ),
    "esign.signature_type": (
        st.integers(-(2**31), 2**31 - 1),
        lambda r, v: setattr(r.esign, "signature_type", v),
    ),
}


def dispatch_requests() -> st.SearchStrategy[Sent[pb.DispatchRequest]]:
    """A valid request of some service (or none), with some of its fields changed."""
    return _dispatch_request().map(Sent)


@st.composite
def _dispatch_request(draw: st.DrawFn) -> pb.DispatchRequest:
    service = draw(st.sampled_from(list(pb.Service.values())[1:]))
    valid = draw(st.sampled_from([True] * 4 + [False]))
    request = request_for(service) if valid else pb.DispatchRequest()
    for name in draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=3, unique=True)):
        values, apply = MUTATIONS[name]
        apply(request, draw(values))
    return request


def cursors(known: Sequence[str]) -> st.SearchStrategy[str]:
    return mostly(
        st.one_of(
            st.just(""), st.sampled_from(list(known) or ["1"]), st.integers(0, 2**63 - 1).map(str)
        ),
        st.one_of(
            st.integers(2**63, 2**70).map(str),
            st.sampled_from(["-1", " 1", "1 ", "+1", "0x1", "1.0", "²", "٣", "\uff11", "9" * 5000]),
            TEXT,
        ),
    )


def subscribe_requests(
    job_ids: Sequence[str], known_cursors: Sequence[str]
) -> st.SearchStrategy[Sent[pb.SubscribeRequest]]:
    return _subscribe_request(job_ids, known_cursors).map(Sent)


@st.composite
def _subscribe_request(
    draw: st.DrawFn, job_ids: Sequence[str], known_cursors: Sequence[str]
) -> pb.SubscribeRequest:
    ids = mostly(st.sampled_from(list(job_ids) or ["job_x"]), TEXT)
    return pb.SubscribeRequest(
        after_cursor=draw(cursors(known_cursors)),
        job_ids=draw(
            mostly(
                st.lists(ids, max_size=3), st.builds(lambda n: ["j"] * n, st.integers(999, 1002))
            )
        ),
        services=draw(st.lists(SERVICES, max_size=3)),
        metadata=draw(METADATA),
        live_only=draw(st.sampled_from([False, False, False, True])),
    )


def job_ids(known: Sequence[str]) -> st.SearchStrategy[str]:
    real = st.sampled_from(list(known) or ["job_x"])
    return mostly(
        real,
        st.one_of(
            real.map(lambda j: j + "x"),
            real.map(lambda j: j.upper()),
            real.map(lambda j: j + "\x00"),
            st.sampled_from(["", "job_", "job_" + "0" * 32, "j" * 128, "j" * 129]),
            TEXT,
        ),
        times=1,
    )


def page_tokens(known: Sequence[str]) -> st.SearchStrategy[str]:
    """Tokens the gateway gave, changed; and tokens it never gave, shaped like its own."""

    def encoded(value: Any) -> str:
        return base64.urlsafe_b64encode(dumps(value)).decode()

    real = st.sampled_from(list(known) or [""])
    shaped = st.tuples(
        st.one_of(INTEGERS, FLOATS, JSON_SCALARS), st.one_of(TEXT, ANY_TEXT, JSON_SCALARS)
    ).map(lambda v: encoded(list(v)))
    return mostly(
        st.one_of(st.just(""), real),
        st.one_of(
            shaped,
            real.map(lambda t: t[:-1]),
            real.map(lambda t: t + "A"),
            real.map(lambda t: t.rstrip("=")),
            json_values().map(encoded),
            st.sampled_from(
                [
                    encoded([math.inf, "job_x"]).replace("=", ""),
                    base64.urlsafe_b64encode(b'[1e999, "job_x"]').decode(),
                    base64.urlsafe_b64encode(b'[NaN, "job_x"]').decode(),
                    base64.urlsafe_b64encode(b'[1, "\\ud800"]').decode(),
                    base64.urlsafe_b64encode(b"[" + b"9" * 5000 + b', "job_x"]').decode(),
                ]
            ),
            TEXT,
        ),
        times=1,
    )


def list_jobs_requests(
    known_tokens: Sequence[str],
) -> st.SearchStrategy[Sent[pb.ListJobsRequest]]:
    return st.builds(
        pb.ListJobsRequest,
        page_size=mostly(st.integers(0, 3), st.integers(-(2**31), 2**31 - 1)),
        page_token=page_tokens(known_tokens),
    ).map(Sent)


def get_job_requests(known: Sequence[str]) -> st.SearchStrategy[Sent[pb.GetJobRequest]]:
    return job_ids(known).map(lambda job_id: Sent(pb.GetJobRequest(job_id=job_id)))
