"""Dispatch requests the sandbox accepts, and the rich details of a gRPC error."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dispatcher.gateway.v1 import gateway_pb2 as pb

EVERY_SERVICE: tuple[tuple[int, ...], ...] = (
    (pb.SERVICE_EMAIL,),
    (pb.SERVICE_POSTAL,),
    (pb.SERVICE_ESIGN,),
    (pb.SERVICE_SMS,),
    (pb.SERVICE_INVOICING,),
    (pb.SERVICE_FILE,),
    (pb.SERVICE_UPLOAD,),
    (pb.SERVICE_FILE, pb.SERVICE_EMAIL),
    (pb.SERVICE_FILE, pb.SERVICE_ESIGN),
)
"""The seven services, then two chains: one that ends by the upstream's answer, one by webhook
(request_for(service, chain=rest) builds each)."""


def email_request(**changes: object) -> pb.DispatchRequest:
    request = pb.DispatchRequest(
        service=pb.SERVICE_EMAIL,
        template=pb.Template(id=1),
        email=pb.EmailOptions(
            sender=pb.EmailAddress(email="noreply@example.com"),
            to=[pb.EmailAddress(email="ada@example.com")],
            subject="Hello",
            text="Hi Ada",
        ),
    )
    request.MergeFrom(pb.DispatchRequest(**changes))  # type: ignore[arg-type]
    return request


def request_for(service: int, *, chain: Iterator[int] | tuple[int, ...] = ()) -> pb.DispatchRequest:
    """A valid request for a service (and chain), as the sandbox checks them."""
    request = pb.DispatchRequest(service=service, chain=list(chain), template=pb.Template(id=1))
    services = {service, *chain}
    if pb.SERVICE_EMAIL in services:
        request.email.CopyFrom(email_request().email)
    if pb.SERVICE_SMS in services:
        request.sms.to.append("+33600000000")
        request.sms.text = "Hi"
    if pb.SERVICE_POSTAL in services:
        request.postal.to.CopyFrom(
            pb.PostalAddress(
                name="Ada Lovelace",
                address_line1="1 rue de la Paix",
                city="Paris",
                postal_code="75002",
                country="FR",
            )
        )
    if pb.SERVICE_ESIGN in services:
        request.esign.document_name = "Contract"
        request.esign.signers.append(pb.Signer(email="ada@example.com"))
    if pb.SERVICE_INVOICING in services:
        request.invoicing.document_type = "INVOICE"
    return request


def status_details(exc: grpc.aio.AioRpcError) -> list[object]:
    """The error's google.rpc details (BadRequest, ErrorInfo, RetryInfo), unpacked."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None
    found: list[object] = []
    for detail in status.details:
        for kind in (
            error_details_pb2.BadRequest,
            error_details_pb2.ErrorInfo,
            error_details_pb2.RetryInfo,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found.append(message)
    return found
