"""DispatchBatch on a gateway against the sandbox, on both faces: one result per request in
order, each item taken as Dispatch takes one (validation, idempotency, authorization, the
client's limits), the accepted ones queued and sent upstream once each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher_gateway.app import GatewayApp
from dispatcher_gateway.core.retry import RateLimit
from dispatcher_gateway.rpc.clients import client_line
from dispatcher_gateway.rpc.limits import ClientQuotas
from tests.support.faces import FACES, Face, Failed, face_on
from tests.support.loopback import GatewayFactory, RunningSandbox
from tests.support.requests import email_request, request_for

SENT_TIMEOUT = 30.0
BATCH = 100
INVALID = {17: "email.to[0].email", 63: "template.id"}
"""Two items of the batch of 100 made invalid, and the field each is refused for."""
TOKEN = "dgw_mail-only-token-0123456789"


@pytest.fixture(params=FACES)
async def face(
    request: pytest.FixtureRequest, gateways: GatewayFactory, gateway: GatewayApp
) -> AsyncIterator[Face]:
    async with face_on(request.param, gateways) as opened:
        yield opened


def hundred() -> list[pb.DispatchRequest]:
    requests = [email_request(metadata={"n": str(i)}) for i in range(BATCH)]
    requests[17].email.to[0].email = "not-an-address"
    requests[63].template.id = 0
    return requests


async def batch(face: Face, requests: list[pb.DispatchRequest]) -> pb.DispatchBatchResponse:
    response: pb.DispatchBatchResponse = await face.call(
        "DispatchBatch", pb.DispatchBatchRequest(requests=requests)
    )
    assert len(response.results) == len(requests)
    return response


async def sent_upstream(sandbox: RunningSandbox, job_ids: set[str]) -> dict[str, int]:
    """How many requests the sandbox received for each job, once all of them arrived."""
    async with asyncio.timeout(SENT_TIMEOUT):
        while True:
            keys = [r.idempotency_key for r in sandbox.sandbox.requests]
            if job_ids <= set(keys):
                return {job_id: keys.count(job_id) for job_id in job_ids}
            await asyncio.sleep(0.05)


async def test_a_batch_of_100_answers_each_item_in_order_and_queues_the_valid_ones(
    face: Face, sandbox: RunningSandbox
) -> None:
    response = await batch(face, hundred())

    for i, result in enumerate(response.results):
        if i in INVALID:
            assert result.WhichOneof("result") == "error"
            assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert [v.field for v in result.error.field_violations] == [INVALID[i]]
        else:
            assert result.WhichOneof("result") == "job"
            assert result.job.state == pb.JOB_STATE_QUEUED
            assert result.job.metadata["n"] == str(i)
    job_ids = {r.job.job_id for r in response.results if r.HasField("job")}
    assert len(job_ids) == BATCH - len(INVALID)
    assert set((await sent_upstream(sandbox, job_ids)).values()) == {1}


async def test_more_requests_than_the_limit_is_invalid_argument(gateways: GatewayFactory) -> None:
    await gateways.start(batch_max=3)
    async with face_on("grpc", gateways) as face:
        with pytest.raises(Failed) as refused:
            await batch(face, [email_request()] * 4)
        await batch(face, [email_request()] * 3)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.violations() == ["requests"]


async def test_an_items_idempotency_key_gives_the_same_job_within_and_across_calls(
    face: Face,
) -> None:
    keyed = email_request(idempotency_key="order-1")
    other = email_request(idempotency_key="order-1", metadata={"other": "request"})

    first = await batch(face, [keyed, email_request(), keyed])
    second = await batch(face, [keyed, other])

    job_id = first.results[0].job.job_id
    assert first.results[2].job.job_id == job_id
    assert first.results[1].job.job_id != job_id
    assert second.results[0].job.job_id == job_id
    assert second.results[1].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert job_id in second.results[1].error.message


async def test_sync_items_and_times_out_of_range_are_item_errors(face: Face) -> None:
    sync = email_request(mode=pb.MODE_SYNC)
    past = email_request()
    past.not_before.FromSeconds(int(time.time()) - 3600)
    later = email_request()
    later.not_before.FromSeconds(int(time.time()) + 3600)

    response = await batch(face, [sync, past, later])

    assert [v.field for v in response.results[0].error.field_violations] == ["mode"]
    assert [v.field for v in response.results[1].error.field_violations] == ["not_before"]
    assert response.results[2].job.state == pb.JOB_STATE_QUEUED
    assert response.results[2].job.not_before == later.not_before


async def test_the_clients_dispatch_rate_and_queue_limit_count_each_item(
    gateways: GatewayFactory,
) -> None:
    await gateways.start(client_quotas=ClientQuotas(dispatch_rate=RateLimit(3, 60.0)))
    async with face_on("grpc", gateways) as face:
        response = await batch(face, [email_request()] * 5)
    codes = [r.error.code if r.HasField("error") else 0 for r in response.results]
    assert codes == [0, 0, 0, *[grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]] * 2]


async def test_the_queue_limit_counts_the_items_of_the_batch_accepted_before(
    gateways: GatewayFactory,
) -> None:
    await gateways.start(
        # An upstream nobody answers: the jobs stay queued.
        dispatcher_base_url="http://127.0.0.1:9",
        client_quotas=ClientQuotas(max_queued=2),
    )
    async with face_on("grpc", gateways) as face:
        response = await batch(face, [email_request()] * 3)
    assert [r.WhichOneof("result") for r in response.results] == ["job", "job", "error"]
    assert "2 jobs waiting" in response.results[2].error.message


async def test_each_item_is_authorized_for_its_services(
    gateways: GatewayFactory, tmp_path: Path
) -> None:
    clients = tmp_path / "clients"
    clients.write_text(client_line("mailer", TOKEN, ["services=email"]) + "\n")
    await gateways.start(allow_anonymous=False, client_tokens_file=str(clients))
    async with face_on("json", gateways) as face:
        response: pb.DispatchBatchResponse = await face.call(
            "DispatchBatch",
            pb.DispatchBatchRequest(requests=[email_request(), request_for(pb.SERVICE_SMS)]),
            TOKEN,
        )
    assert response.results[0].job.state == pb.JOB_STATE_QUEUED
    assert response.results[1].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "sms" in response.results[1].error.message
