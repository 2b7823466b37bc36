"""The edge every request passes: its X-Request-ID (echoed, or made up), Basic Auth outside the
open paths, and the request log, which counts every dispatch POST whatever stops it."""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
import time

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError
from .idempotency import HEADER_IDEMPOTENCY_KEY
from .records import RequestRecord
from .request_log import RequestLog
from .wire import asks_async, error_response

HEADER_REQUEST_ID = "X-Request-ID"
MAX_REQUEST_ID = 200

API_PREFIX = "/api/"
SIDE_DOOR_PREFIX = "/_sandbox/"
OPEN_PATHS = frozenset({"/healthz"})
VALIDATE_SEGMENT = "validate"
VERSIONED_SEGMENT = "v1"

_PRINTABLE = re.compile(r"[\x21-\x7e]+")


def is_dispatch_request(method: str, path: str) -> bool:
    """POST /api/{service...}, the requests the faults and the statistics are about."""
    if method != "POST" or not path.startswith(API_PREFIX):
        return False
    segments = path.removeprefix(API_PREFIX).split("/")
    return segments[0] != VERSIONED_SEGMENT and segments[-1] != VALIDATE_SEGMENT


def basic_auth_ok(header: str | None, email: str, password: str) -> bool:
    """Whether an Authorization header carries these Basic Auth credentials."""
    if not header:
        return False
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, sep, given = decoded.partition(":")
    if not sep:
        return False
    # Both compared in full whatever the first says, so timing tells nothing.
    user_ok = hmac.compare_digest(user.encode(), email.encode())
    password_ok = hmac.compare_digest(given.encode(), password.encode())
    return user_ok and password_ok


class Edge:
    """The middleware: see the module's docstring."""

    def __init__(self, app: ASGIApp, log: RequestLog, email: str, password: str) -> None:
        self.app = app
        self.log = log
        self.email = email
        self.password = password

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.headers.get(HEADER_REQUEST_ID, "")
        ok = len(given) <= MAX_REQUEST_ID and _PRINTABLE.fullmatch(given)
        request_id = given if ok else f"req_{secrets.token_hex(8)}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        entry: RequestRecord | None = None
        if is_dispatch_request(scope["method"], scope["path"]):
            entry = RequestRecord(
                request_id=request_id,
                idempotency_key=request.headers.get(HEADER_IDEMPOTENCY_KEY, ""),
                path=scope["path"],
                mode="async" if asks_async(request) else "sync",
                received_at=time.time(),
                traceparent=request.headers.get("traceparent", ""),
            )
            self.log.arrived(entry)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER_REQUEST_ID] = request_id
                if entry is not None:
                    entry.dispatch_id = state.get("dispatch_id")
                    entry.replayed = bool(state.get("replayed"))
                    self.log.answered(entry, int(message["status"]))
            await send(message)

        path: str = scope["path"]
        needs_auth = path not in OPEN_PATHS and not path.startswith(SIDE_DOOR_PREFIX)
        authorization = request.headers.get("Authorization")
        if needs_auth and not basic_auth_ok(authorization, self.email, self.password):
            error = ApiError(
                401,
                "unauthorized",
                "Invalid or missing credentials",
                headers={"WWW-Authenticate": 'Basic realm="Docs-Dispatcher"'},
            )
            await error_response(error, path, request_id)(scope, receive, send_with_id)
            return
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if entry is not None and entry.status is None:
                # Starlette's outermost middleware answers what escapes with a bare 500.
                self.log.answered(entry, 500)
            raise
