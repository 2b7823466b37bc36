"""WebhookVerifier: Dispatcher's scheme, the Standard Webhooks scheme, rotation and tolerance."""

from __future__ import annotations

import base64
import hashlib

import pytest

from dispatcher_gateway.webhooks import (
    TIMESTAMP_TOLERANCE,
    WebhookVerificationError,
    WebhookVerifier,
    sign_dispatcher,
    sign_standard,
)

SECRET = "whk-secret-0123456789"
OLD_SECRET = "whk-secret-old-987654"
NOW = 1_800_000_000
BODY = b'{"event":"dispatch_completed","dispatchId":"disp_1","data":{}}'


def verifier(
    *secrets: str, tolerance: float = TIMESTAMP_TOLERANCE, require_timestamp: bool = True
) -> WebhookVerifier:
    return WebhookVerifier(
        secrets or (SECRET,),
        tolerance=tolerance,
        clock=lambda: NOW,
        require_timestamp=require_timestamp,
    )


def refused(v: WebhookVerifier, body: bytes, headers: dict[str, str]) -> str:
    with pytest.raises(WebhookVerificationError) as info:
        v.verify(body, headers)
    return str(info.value)


# Dispatcher's scheme


def test_a_signature_without_a_timestamp_is_refused() -> None:
    """Hardened beyond docs/upstream.md, where the timestamp is optional: a signature over the
    body alone never expires, so a captured webhook could be replayed for ever."""
    headers = sign_dispatcher(SECRET, BODY, webhook_id="wh_1")

    assert refused(verifier(), BODY, headers) == "missing timestamp"


def test_signature_over_the_raw_body_when_a_timestamp_is_not_required() -> None:
    headers = sign_dispatcher(SECRET, BODY, webhook_id="wh_1")

    assert verifier(require_timestamp=False).verify(BODY, headers).id == "wh_1"


def test_signature_over_timestamp_and_body() -> None:
    headers = sign_dispatcher(SECRET, BODY, timestamp=NOW, webhook_id="wh_2")

    assert verifier().verify(BODY, headers).id == "wh_2"


def test_the_signed_id_is_the_body_hash_whatever_id_or_timestamp_comes_with_it() -> None:
    """Dispatcher's scheme does not sign X-Webhook-Id: a replay under another id (or none) is the
    same webhook; so is a retry, signed again with a later timestamp."""
    body_hash = "sha256:" + hashlib.sha256(BODY).hexdigest()
    deliveries = [
        sign_dispatcher(SECRET, BODY, timestamp=NOW, webhook_id="wh_1"),
        sign_dispatcher(SECRET, BODY, timestamp=NOW, webhook_id="wh_replayed"),
        sign_dispatcher(SECRET, BODY, timestamp=NOW),
        sign_dispatcher(SECRET, BODY, timestamp=NOW + 5, webhook_id="wh_1"),
    ]

    assert {verifier().verify(BODY, h).signed_id for h in deliveries} == {body_hash}
    other = BODY.replace(b"disp_1", b"disp_2")
    assert verifier().verify(other, sign_dispatcher(SECRET, other, timestamp=NOW)).signed_id != (
        body_hash
    )


def test_a_body_signature_does_not_pass_once_a_timestamp_is_added() -> None:
    headers = sign_dispatcher(SECRET, BODY) | {"X-Webhook-Timestamp": str(NOW)}

    refused(verifier(require_timestamp=False), BODY, headers)


def test_a_timestamped_signature_does_not_pass_without_its_timestamp() -> None:
    headers = sign_dispatcher(SECRET, BODY, timestamp=NOW)
    del headers["X-Webhook-Timestamp"]

    refused(verifier(require_timestamp=False), BODY, headers)


def test_header_names_are_case_insensitive() -> None:
    headers = {k.lower(): v for k, v in sign_dispatcher(SECRET, BODY, timestamp=NOW).items()}

    verifier().verify(BODY, headers)


def test_a_tampered_body_is_refused() -> None:
    headers = sign_dispatcher(SECRET, BODY, timestamp=NOW)

    refused(verifier(), BODY.replace(b"completed", b"failed"), headers)


def test_a_tampered_timestamp_is_refused() -> None:
    headers = sign_dispatcher(SECRET, BODY, timestamp=NOW) | {"X-Webhook-Timestamp": str(NOW + 1)}

    refused(verifier(), BODY, headers)


def test_the_wrong_secret_is_refused() -> None:
    headers = sign_dispatcher("another-secret", BODY, timestamp=NOW)

    refused(verifier(), BODY, headers)


def test_one_matching_signature_among_several_is_enough() -> None:
    good = sign_dispatcher(SECRET, BODY, timestamp=NOW)
    other = sign_dispatcher("next-secret", BODY, timestamp=NOW)["X-Webhook-Signature"]
    both = good["X-Webhook-Signature"]

    verifier().verify(BODY, good | {"X-Webhook-Signature": f"{other} {both}"})


def test_several_signatures_none_matching_are_refused() -> None:
    one = sign_dispatcher("a-secret", BODY, timestamp=NOW)
    two = sign_dispatcher("b-secret", BODY, timestamp=NOW)["X-Webhook-Signature"]
    headers = one | {"X-Webhook-Signature": f"{one['X-Webhook-Signature']} {two}"}

    assert refused(verifier(), BODY, headers) == "no signature matches"


def test_any_configured_secret_verifies_during_rotation() -> None:
    v = verifier(SECRET, OLD_SECRET)

    v.verify(BODY, sign_dispatcher(SECRET, BODY, timestamp=NOW))
    v.verify(BODY, sign_dispatcher(OLD_SECRET, BODY, timestamp=NOW))


def test_a_retired_secret_no_longer_verifies() -> None:
    refused(verifier(SECRET), BODY, sign_dispatcher(OLD_SECRET, BODY, timestamp=NOW))


def test_the_key_is_the_secret_as_given_even_with_a_whsec_prefix() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()

    verifier(secret).verify(BODY, sign_dispatcher(secret, BODY, timestamp=NOW))


@pytest.mark.parametrize("skew", [-TIMESTAMP_TOLERANCE, TIMESTAMP_TOLERANCE])
def test_a_timestamp_at_the_edge_of_the_tolerance_passes(skew: float) -> None:
    headers = sign_dispatcher(SECRET, BODY, timestamp=int(NOW + skew))

    verifier().verify(BODY, headers)


@pytest.mark.parametrize("skew", [-TIMESTAMP_TOLERANCE - 1, TIMESTAMP_TOLERANCE + 1])
def test_a_timestamp_beyond_the_tolerance_is_refused(skew: float) -> None:
    headers = sign_dispatcher(SECRET, BODY, timestamp=int(NOW + skew))

    assert "tolerance" in refused(verifier(), BODY, headers)


@pytest.mark.parametrize("value", ["", "soon", "-5", "1.5", "\uff11\uff12\uff13", "1" * 16])
def test_a_malformed_timestamp_is_refused(value: str) -> None:
    headers = sign_dispatcher(SECRET, BODY) | {"X-Webhook-Timestamp": value}

    refused(verifier(), BODY, headers)


@pytest.mark.parametrize(
    "header",
    ["", "sha256=", "sha256=zz", "md5=abcd", "sha256=" + "ab" * 16, "v1,AAAA"],
)
def test_an_unreadable_signature_header_is_refused(header: str) -> None:
    headers = {"X-Webhook-Signature": header, "X-Webhook-Timestamp": str(NOW)}

    assert refused(verifier(), BODY, headers) == "no readable signature"


def test_a_missing_signature_is_refused() -> None:
    assert refused(verifier(), BODY, {"X-Webhook-Id": "wh_1"}) == "missing signature"


def test_without_an_id_header_the_id_is_the_body_hash() -> None:
    headers = sign_dispatcher(SECRET, BODY, timestamp=NOW)

    assert verifier().verify(BODY, headers).id == "sha256:" + hashlib.sha256(BODY).hexdigest()


def test_an_oversized_id_is_replaced_by_its_stable_hash() -> None:
    long_id = "x" * 1000
    headers = sign_dispatcher(SECRET, BODY, timestamp=NOW, webhook_id=long_id)

    first = verifier().verify(BODY, headers).id

    assert first == verifier().verify(BODY, headers).id
    assert first.startswith("sha256:")
    assert len(first) < 100


def test_errors_never_carry_a_secret_or_signature() -> None:
    headers = sign_dispatcher(OLD_SECRET, BODY, timestamp=NOW)
    message = refused(verifier(SECRET), BODY, headers)

    for leaked in (SECRET, OLD_SECRET, headers["X-Webhook-Signature"].removeprefix("sha256=")):
        assert leaked not in message
    assert SECRET not in repr(verifier(SECRET))


# The Standard Webhooks scheme

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_sign_standard_reproduces_the_specifications_test_vector() -> None:
    headers = sign_standard(
        VECTOR_SECRET, VECTOR_BODY, timestamp=VECTOR_TIMESTAMP, webhook_id=VECTOR_ID
    )

    assert headers["webhook-signature"] == VECTOR_SIGNATURE


def test_the_specifications_test_vector_verifies() -> None:
    v = WebhookVerifier([VECTOR_SECRET], clock=lambda: VECTOR_TIMESTAMP)
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }

    assert v.verify(VECTOR_BODY, headers).id == VECTOR_ID


def test_standard_scheme_with_a_raw_utf8_secret() -> None:
    headers = sign_standard(SECRET, BODY, timestamp=NOW, webhook_id="msg_1")

    assert verifier().verify(BODY, headers).id == "msg_1"


def test_standard_scheme_the_signed_id_is_its_id_which_it_signs() -> None:
    headers = sign_standard(SECRET, BODY, timestamp=NOW, webhook_id="msg_1")

    assert verifier().verify(BODY, headers).signed_id == "msg_1"


def test_standard_scheme_whsec_secret_keyed_by_its_utf8_bytes() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    raw = sign_dispatcher(secret, f"msg_1.{NOW}.".encode() + BODY)["X-Webhook-Signature"]
    signature = "v1," + base64.b64encode(bytes.fromhex(raw.removeprefix("sha256="))).decode()
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(NOW), "webhook-signature": signature}

    verifier(secret).verify(BODY, headers)


def test_standard_scheme_several_signatures_one_match() -> None:
    good = sign_standard(SECRET, BODY, timestamp=NOW, webhook_id="msg_1")
    other = sign_standard("other", BODY, timestamp=NOW, webhook_id="msg_1")["webhook-signature"]
    headers = good | {"webhook-signature": f"{other} v2,xyz {good['webhook-signature']}"}

    verifier().verify(BODY, headers)


def test_standard_scheme_a_tampered_body_is_refused() -> None:
    headers = sign_standard(SECRET, BODY, timestamp=NOW, webhook_id="msg_1")

    refused(verifier(), BODY + b" ", headers)


def test_standard_scheme_the_id_is_signed() -> None:
    headers = sign_standard(SECRET, BODY, timestamp=NOW, webhook_id="msg_1")

    refused(verifier(), BODY, headers | {"webhook-id": "msg_2"})


@pytest.mark.parametrize("skew", [-TIMESTAMP_TOLERANCE - 1, TIMESTAMP_TOLERANCE + 1])
def test_standard_scheme_stale_or_future_timestamps_are_refused(skew: float) -> None:
    headers = sign_standard(SECRET, BODY, timestamp=int(NOW + skew), webhook_id="msg_1")

    refused(verifier(), BODY, headers)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp"])
def test_standard_scheme_needs_id_and_timestamp(missing: str) -> None:
    headers = sign_standard(SECRET, BODY, timestamp=NOW, webhook_id="msg_1")
    del headers[missing]

    refused(verifier(), BODY, headers)


# Configuration


@pytest.mark.parametrize("secrets", [[], [""], [SECRET, ""]])
def test_a_verifier_needs_non_empty_secrets(secrets: list[str]) -> None:
    with pytest.raises(ValueError, match="secret"):
        WebhookVerifier(secrets)


def test_a_single_string_is_not_taken_for_a_list_of_secrets() -> None:
    with pytest.raises(TypeError):
        WebhookVerifier(SECRET)
