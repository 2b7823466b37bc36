import pytest
from google.protobuf import json_format

from dispatcher.gateway.v1 import gateway_pb2 as pb
from dispatcher_gateway.core.errors import InvalidArgument
from dispatcher_gateway.core.model import Job, JobState, Mode, Service, UpstreamFailure
from dispatcher_gateway.rpc.convert import (
    failure_to_pb,
    fill_job,
    filter_from_request,
    job_to_pb,
    spec_from_request,
    timestamp,
)


def email_request(**changes: object) -> pb.DispatchRequest:
    request = pb.DispatchRequest(
        service=pb.SERVICE_EMAIL,
        template=pb.Template(id=1),
        email=pb.EmailOptions(
            sender=pb.EmailAddress(email="noreply@example.com"),
            to=[pb.EmailAddress(email="ada@example.com", name="Ada")],
            subject="Hello",
            text="Hi",
        ),
        metadata={"order": "42"},
    )
    for name, value in changes.items():
        setattr(request, name, value)
    return request


def violations(request: pb.DispatchRequest) -> set[str]:
    with pytest.raises(InvalidArgument) as info:
        spec_from_request(request)
    return {v.field for v in info.value.violations}


def test_email_request_becomes_the_upstream_body() -> None:
    spec = spec_from_request(email_request())
    assert spec.services == (Service.EMAIL,)
    assert spec.mode is Mode.ASYNC
    assert spec.path == "/api/email"
    assert spec.body["email"] == {
        "from": {"email": "noreply@example.com"},
        "to": [{"email": "ada@example.com", "name": "Ada"}],
        "subject": "Hello",
        "body": {"text": "Hi"},
    }
    assert spec.body["template"] == {"id": 1, "data": {}}
    assert spec.body["metadata"] == {"order": "42"}


def test_chain_makes_one_path() -> None:
    request = email_request(service=pb.SERVICE_FILE)
    request.chain.append(pb.SERVICE_EMAIL)
    assert spec_from_request(request).path == "/api/file/email"


def test_sync_mode() -> None:
    assert spec_from_request(email_request(mode=pb.MODE_SYNC)).mode is Mode.SYNC


def test_every_problem_is_reported_at_once() -> None:
    request = pb.DispatchRequest(service=pb.SERVICE_EMAIL, email=pb.EmailOptions())
    assert violations(request) >= {"template.id", "email.sender.email", "email.to"}


def test_missing_service_is_refused() -> None:
    assert "service" in violations(email_request(service=pb.SERVICE_UNSPECIFIED))


def test_typed_options_for_a_service_not_requested_are_refused() -> None:
    request = email_request()
    request.sms.to.append("+33600000000")
    assert "sms" in violations(request)


def test_service_without_its_options_is_refused() -> None:
    request = pb.DispatchRequest(service=pb.SERVICE_POSTAL, template=pb.Template(id=1))
    assert "postal" in violations(request)


def test_options_may_come_through_extra() -> None:
    request = pb.DispatchRequest(service=pb.SERVICE_POSTAL, template=pb.Template(id=1))
    request.extra.update({"postal": {"to": {"name": "Ada"}}})
    assert spec_from_request(request).body["postal"] == {"to": {"name": "Ada"}}


def test_postal_country_must_be_iso() -> None:
    request = pb.DispatchRequest(service=pb.SERVICE_POSTAL, template=pb.Template(id=1))
    request.postal.to.CopyFrom(
        pb.PostalAddress(
            name="Ada", address_line1="1 rue", city="Paris", postal_code="75001", country="France"
        )
    )
    assert violations(request) == {"postal.to.country"}


def test_esign_needs_signers() -> None:
    request = pb.DispatchRequest(service=pb.SERVICE_ESIGN, template=pb.Template(id=1))
    request.esign.document_name = "Contract"
    assert violations(request) == {"esign.signers"}


def test_overlong_idempotency_key_is_refused() -> None:
    assert violations(email_request(idempotency_key="k" * 257)) == {"idempotency_key"}


def test_same_request_same_fingerprint_other_request_other() -> None:
    a, b = spec_from_request(email_request()), spec_from_request(email_request())
    assert a.fingerprint() == b.fingerprint()
    other = spec_from_request(email_request(provider_name="ses"))
    assert other.fingerprint() != a.fingerprint()


def test_subscribe_filter() -> None:
    request = pb.SubscribeRequest(job_ids=["job_1"], services=[pb.SERVICE_SMS], metadata={"a": "b"})
    wanted = filter_from_request(request)
    assert wanted.job_ids == {"job_1"}
    assert wanted.services == {Service.SMS}


def test_subscribe_filter_refuses_unspecified_service() -> None:
    with pytest.raises(InvalidArgument):
        filter_from_request(pb.SubscribeRequest(services=[pb.SERVICE_UNSPECIFIED]))


def test_violations_come_in_request_order_then_stray_options() -> None:
    request = pb.DispatchRequest(
        service=pb.SERVICE_POSTAL, chain=[pb.SERVICE_ESIGN, pb.SERVICE_POSTAL], mode=7
    )
    request.sms.to.append("+33600000000")
    request.metadata[""] = "x"
    assert [v.field for v in _violations_in_order(request)] == [
        "chain",
        "mode",
        "template.id",
        "postal",
        "esign",
        "postal",
        "sms",
        "metadata[]",
    ]


def _violations_in_order(request: pb.DispatchRequest) -> list[object]:
    with pytest.raises(InvalidArgument) as info:
        spec_from_request(request)
    return list(info.value.violations)


def job(**changes: object) -> Job:
    fields: dict[str, object] = {
        "job_id": "job_1",
        "client": "anonymous",
        "services": (Service.FILE, Service.EMAIL),
        "mode": Mode.ASYNC,
        "state": JobState.FAILED,
        "body": {"providerName": "ses", "template": {"id": 7, "data": {}}},
        "metadata": {"order": "42"},
        "idempotency_key": "key-1",
        "request_hash": "h",
        "created_at": 1_700_000_000.25,
        "updated_at": 1_700_000_001.5,
        "dispatch_id": "d-1",
        "result": {"pages": 2},
        "error": UpstreamFailure("validation_error", "bad", 400, {"field": "to"}),
        "last_event": "dispatch_failed",
    }
    fields.update(changes)
    return Job(**fields)  # type: ignore[arg-type]


def test_job_with_every_field() -> None:
    message = job_to_pb(job())
    assert message.job_id == "job_1"
    assert message.dispatch_id == "d-1"
    assert message.service == pb.SERVICE_FILE
    assert list(message.chain) == [pb.SERVICE_EMAIL]
    assert message.mode == pb.MODE_ASYNC
    assert message.state == pb.JOB_STATE_FAILED
    assert message.provider_name == "ses"
    assert message.template_id == 7
    assert dict(message.metadata) == {"order": "42"}
    assert message.idempotency_key == "key-1"
    assert message.last_event == "dispatch_failed"
    assert (message.create_time.seconds, message.create_time.nanos) == (1_700_000_000, 250_000_000)
    assert (message.update_time.seconds, message.update_time.nanos) == (1_700_000_001, 500_000_000)
    assert dict(message.result) == {"pages": 2}
    assert message.error.code == "validation_error"
    assert message.error.http_status == 400


def test_job_without_optional_fields_leaves_them_unset() -> None:
    message = job_to_pb(
        job(
            services=(Service.SMS,),
            body={},
            metadata={},
            idempotency_key="",
            dispatch_id="",
            result=None,
            error=None,
            last_event="",
        )
    )
    assert message.service == pb.SERVICE_SMS
    assert not message.chain
    assert message.template_id == 0
    assert not message.HasField("result")
    assert not message.HasField("error")
    assert message.provider_name == message.dispatch_id == message.idempotency_key == ""


def test_fill_job_writes_into_a_response_as_job_to_pb_builds() -> None:
    response = pb.DispatchResponse()
    fill_job(response.job, job())
    assert response == pb.DispatchResponse(job=job_to_pb(job()))


@pytest.mark.parametrize("mode", [pb.MODE_ASYNC, pb.MODE_SYNC])
@pytest.mark.parametrize(
    "field",
    ["webhookUrl", "callbackUrl", "async", "idempotencyKey", "requestId", "WEBHOOK_URL", "api-key"],
)
def test_fields_the_gateway_owns_are_refused_in_extra_in_every_mode(field: str, mode: int) -> None:
    request = email_request(mode=mode)
    request.extra.update({field: "https://anywhere/", "harmless": 1})
    with pytest.raises(InvalidArgument) as info:
        spec_from_request(request)
    [violation] = info.value.violations
    assert violation.field == f"extra.{field}"
    assert "set by the gateway" in violation.description


def test_other_extra_fields_go_upstream() -> None:
    request = email_request()
    request.extra.update({"documentType": "INVOICE", "webhookUrls": "not ours"})
    body = spec_from_request(request).body
    assert (body["documentType"], body["webhookUrls"]) == ("INVOICE", "not ours")


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_a_number_json_cannot_carry_is_a_field_violation(number: float) -> None:
    # Found by tests/fuzz: a Struct holds NaN and the infinities, the upstream's JSON cannot;
    # such a request was INTERNAL.
    request = email_request()
    request.extra.update({"deep": [{"n": number}]})
    request.template.data.update({"n": number})
    with pytest.raises(InvalidArgument) as info:
        spec_from_request(request)
    assert [(v.field, v.description) for v in info.value.violations] == [
        ("extra", "holds NaN or an infinite number, which JSON cannot carry"),
        ("template.data", "holds NaN or an infinite number, which JSON cannot carry"),
    ]


def test_a_flood_of_violations_is_cut_to_a_few() -> None:
    request = email_request()
    request.email.to.extend(pb.EmailAddress(email="nobody") for _ in range(5000))
    with pytest.raises(InvalidArgument) as info:
        spec_from_request(request)
    violations = info.value.violations
    assert len(violations) == 11
    assert violations[-1].description == "and 4990 more, not listed"
    assert len(str(info.value)) < 1000


@pytest.mark.parametrize(
    "changes",
    [
        {"job_ids": ["j" * 129]},
        {"job_ids": ["job_x"] * 1001},
        {"metadata": {"k": "v" * 513}},
        {"metadata": {f"k{n}": "v" for n in range(65)}},
    ],
    ids=["long-id", "many-ids", "long-value", "many-pairs"],
)
def test_subscribe_filters_are_bounded(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument) as info:
        filter_from_request(pb.SubscribeRequest(**changes))  # type: ignore[arg-type]
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (-0.5, "1969-12-31T23:59:59.500Z"),
        (-1e-17, "1969-12-31T23:59:59.999999999Z"),
        (1770985800.25, "2026-02-13T12:30:00.250Z"),
    ],
)
def test_a_time_before_1970_is_a_valid_timestamp(seconds: float, expected: str) -> None:
    # Found by tests/fuzz: truncated, -0.5 s became nanos=-500000000, which the JSON form (and
    # every client checking its Timestamps) refuses.
    stamp = timestamp(seconds)
    assert 0 <= stamp.nanos <= 999_999_999
    assert json_format.MessageToJson(stamp) == f'"{expected}"'


def test_an_http_status_no_int32_holds_is_sent_as_none() -> None:
    # Such a status could be recorded from a webhook before core checked it.
    failure = UpstreamFailure("failed", "", http_status=10**12)
    assert failure_to_pb(failure).http_status == 0
    assert failure_to_pb(UpstreamFailure("failed", "", http_status=404)).http_status == 404
