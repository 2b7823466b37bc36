"""The gateway under fuzzing, as production runs it: a real process, gRPC over TLS with a bearer
token from a clients file, the webhook over HTTPS (the test CA), the sandbox as its upstream.

Its clients here are synchronous (grpc, httpx): the fuzzer runs in a thread of its own, while
the test's event loop serves the sandbox the gateway calls.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher.gateway.v1 import gateway_pb2_grpc as pb_grpc
from dispatcher_gateway.core import states
from dispatcher_gateway.core.model import JobEvent
from dispatcher_gateway.core.tokens import CallbackTokens
from dispatcher_gateway.store.sqlite import SqliteStore
from tests.support.loopback import TlsFiles
from tests.support.process import ServerProcess

CLIENT = "fuzz"
TOKEN = "dgw_fuzz-token-0123456789abcdef"
TOKEN_KEY = "fuzz-callback-token-key-0123456789abcdef"
"""The callback token key, given to the gateway so that the fuzzer can make valid tokens."""
CALL_TIMEOUT = 10.0
DRAIN_TIMEOUT = 30.0
"""Seconds the final Subscribe gets to read every stored event."""
FORBIDDEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
"""What no input may be answered: a bug of the gateway's, or a Python exception's text."""
MAX_STATUS_MESSAGE = 4096
"""Characters of a status message: an answer never echoes a large input."""


def roundtrip(message: Message) -> None:
    """The message survives what clients do with it: protobuf's binary form and its JSON form
    (grpcurl, the JSON mapping of any language, which refuses out-of-range timestamps)."""
    again = type(message).FromString(message.SerializeToString())
    assert again == message
    json_format.Parse(json_format.MessageToJson(message), type(message)())


def struct_of(data: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


@dataclass
class Known:
    """What the fuzzer may aim at: jobs, their tokens and dispatches, cursors, page tokens."""

    job_ids: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    dispatch_ids: list[str] = field(default_factory=list)
    cursors: list[str] = field(default_factory=list)
    page_tokens: list[str] = field(default_factory=list)


@dataclass
class FuzzTarget:
    process: ServerProcess
    tls: TlsFiles
    store_path: str
    known: Known = field(default_factory=Known)

    @property
    def grpc_target(self) -> str:
        return self.process.env["GATEWAY_GRPC_ADDR"]

    @property
    def webhook_base(self) -> str:
        return self.process.env["GATEWAY_PUBLIC_URL"] + "/webhooks/dispatcher/"

    @property
    def admin_url(self) -> str:
        return f"http://{self.process.env['GATEWAY_ADMIN_ADDR']}"

    @contextlib.contextmanager
    def stub(self) -> Iterator[pb_grpc.DispatchServiceStub]:
        with self.channel() as channel:
            yield pb_grpc.DispatchServiceStub(channel)

    @contextlib.contextmanager
    def channel(self) -> Iterator[grpc.Channel]:
        with open(self.tls.ca, "rb") as ca:
            tls = grpc.ssl_channel_credentials(ca.read())
        token = grpc.access_token_call_credentials(TOKEN)
        credentials = grpc.composite_channel_credentials(tls, token)
        with grpc.secure_channel(self.grpc_target, credentials) as channel:
            yield channel

    @contextlib.contextmanager
    def https(self) -> Iterator[httpx.Client]:
        context = ssl.create_default_context(cafile=self.tls.ca)
        with httpx.Client(verify=context, timeout=CALL_TIMEOUT) as client:
            yield client

    def token(self, job_id: str) -> str:
        return CallbackTokens(TOKEN_KEY.encode()).token(job_id)

    # Before: jobs to aim at

    def seed(self, requests: Sequence[pb.DispatchRequest]) -> Known:
        """Dispatch `requests` (sync ones end at once, esign ones wait for the sandbox's
        webhooks), then note what the fuzzer may aim at."""
        known = self.known
        with self.stub() as stub:
            for request in requests:
                job = stub.Dispatch(request, timeout=CALL_TIMEOUT).job
                known.job_ids.append(job.job_id)
                known.tokens.append(self.token(job.job_id))
            for job_id in known.job_ids:
                job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=CALL_TIMEOUT)
                if job.dispatch_id:
                    known.dispatch_ids.append(job.dispatch_id)
            token = ""
            while len(known.page_tokens) < 3:
                page = stub.ListJobs(
                    pb.ListJobsRequest(page_size=1, page_token=token), timeout=CALL_TIMEOUT
                )
                token = page.next_page_token
                if not token:
                    break
                known.page_tokens.append(token)
            stream = stub.Subscribe(pb.SubscribeRequest(), timeout=1.0)
            with contextlib.suppress(grpc.RpcError):
                for event in stream:
                    known.cursors.append(event.cursor)
        return known

    # After: the property

    def check_healthy(self) -> None:
        assert self.process.returncode is None, self.process.log()
        answer = httpx.get(f"{self.admin_url}/healthz", timeout=CALL_TIMEOUT)
        assert answer.status_code == 200
        with self.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        assert status.status == health_pb2.HealthCheckResponse.SERVING

    def check_jobs_readable(self) -> int:
        """Every job lists, and reads with GetJob, without an error; returns how many."""
        seen = 0
        with self.stub() as stub:
            token = ""
            while True:
                page = stub.ListJobs(
                    pb.ListJobsRequest(page_size=100, page_token=token), timeout=CALL_TIMEOUT
                )
                roundtrip(page)
                for job in page.jobs:
                    full = stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=CALL_TIMEOUT)
                    roundtrip(full)
                    seen += 1
                token = page.next_page_token
                if not token:
                    return seen

    def check_deliverable(self, stored: Sequence[JobEvent]) -> int:
        """A Subscribe from the start reads every stored event, as stored, in order, to the last
        one; returns how many."""
        expected = [e for e in stored if e.type not in states.INFORMATIONAL]
        if not expected:
            return 0
        read: list[pb.JobEvent] = []
        with self.stub() as stub:
            stream = stub.Subscribe(pb.SubscribeRequest(), timeout=DRAIN_TIMEOUT)
            for event in stream:
                read.append(event)
                if event.cursor == expected[-1].cursor:
                    stream.cancel()
                    break
        assert [e.cursor for e in read] == [e.cursor for e in expected]
        for message, event in zip(read, expected, strict=True):
            roundtrip(message)
            assert (message.job_id, message.type) == (event.job_id, event.type)
            assert message.data == struct_of(event.data), event.cursor
        return len(read)


async def stored_events(path: str, client: str = CLIENT) -> list[JobEvent]:
    """Every event the gateway's store holds for `client`, read beside the running gateway."""
    store = SqliteStore(path)
    await store.open()
    try:
        events: list[JobEvent] = []
        while True:
            page = await store.read_events(
                client=client, after=events[-1].cursor if events else "", limit=1000
            )
            events.extend(page)
            if len(page) < 1000:
                return events
    finally:
        await store.close()
