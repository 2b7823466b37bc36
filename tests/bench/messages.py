"""What the benchmarks send: the same requests, webhooks and answers for the gateway and for the
bare baselines, built with the gateway's own conversions so that both carry the same bytes."""

from __future__ import annotations

import base64
import json
import time
import uuid

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher_gateway.core.model import Job, JobEvent, JobState, Mode
from dispatcher_gateway.core.states import state_for
from dispatcher_gateway.core.tokens import CallbackTokens
from dispatcher_gateway.rpc.convert import event_to_pb, job_to_pb, spec_from_request
from dispatcher_gateway.sandbox import signature_headers
from tests.support.requests import email_request

WEBHOOK_SECRET = "bench-webhook-secret"
TOKEN_KEY = "bench-callback-token-key-0123456789abcdef"
"""Fixed, so that the load generator can compute the callback token of any job it knows."""
SANDBOX_EMAIL = "bench@example.com"
SANDBOX_PASSWORD = "bench-sandbox-password"
WEBHOOK_EVENT = "letter_in_transit"
"""A progress event: recorded and fanned out every time, whatever the job's state."""
WEBHOOK_PATH = "/webhooks/dispatcher/"


def basic_authorization(email: str, password: str) -> str:
    """The Authorization header of Basic Auth, built once and sent as it is: httpx's auth flow
    would rebuild it for every request, which the gateway's pooled client does not measure."""
    return "Basic " + base64.b64encode(f"{email}:{password}".encode()).decode()


def dispatch_request(*, sync: bool = False) -> pb.DispatchRequest:
    return email_request(mode=pb.MODE_SYNC if sync else pb.MODE_ASYNC)


def dispatch_response() -> pb.DispatchResponse:
    """What the gateway answers to an async `dispatch_request()`: a queued job."""
    spec = spec_from_request(dispatch_request())
    now = time.time()
    job = Job(
        job_id=f"job_{uuid.uuid4().hex}",
        client="anonymous",
        services=spec.services,
        mode=Mode.ASYNC,
        state=JobState.QUEUED,
        body=spec.body,
        metadata=dict(spec.metadata),
        idempotency_key="",
        request_hash=spec.fingerprint(),
        created_at=now,
        updated_at=now,
        last_event="queued",
    )
    return pb.DispatchResponse(job=job_to_pb(job))


def broadcast_event() -> pb.JobEvent:
    """What a subscriber receives for one webhook."""
    spec = spec_from_request(dispatch_request())
    event = JobEvent(
        job_id=f"job_{uuid.uuid4().hex}",
        client="anonymous",
        service=spec.services[0],
        type=WEBHOOK_EVENT,
        state=state_for(WEBHOOK_EVENT),
        data={"seq": 1, "sent": time.monotonic()},
        metadata={},
        event_time=time.time(),
        dispatch_id="disp_bench",
        cursor="123456",
        record_time=time.time(),
    )
    return event_to_pb(event)


def callback_path(job_id: str) -> str:
    return WEBHOOK_PATH + CallbackTokens(TOKEN_KEY.encode()).token(job_id)


def signed_webhook(seq: int, *, secret: str = WEBHOOK_SECRET) -> tuple[bytes, dict[str, str]]:
    """One webhook with a fresh id, carrying the moment it was built (CLOCK_MONOTONIC is one
    clock for every process of the machine, so a subscriber elsewhere can time its trip)."""
    envelope = {
        "event": WEBHOOK_EVENT,
        "timestamp": "2026-11-26T12:00:00Z",
        "dispatchId": "disp_bench",
        "service": "postal",
        "provider": "mysendingbox",
        "data": {"seq": seq, "sent": time.monotonic()},
    }
    body = json.dumps(envelope, separators=(",", ":")).encode()
    headers = signature_headers(
        "dispatcher",
        [secret],
        webhook_id=f"wh_{uuid.uuid4().hex}",
        timestamp=int(time.time()),
        body=body,
    )
    return body, {"Content-Type": "application/json", **headers}
