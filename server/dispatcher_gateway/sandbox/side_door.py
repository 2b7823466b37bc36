"""The side door, /_sandbox/: statistics, faults (read and changed at run time), and what the
sandbox received and made. No Basic Auth: it is the tests' and the operator's, not the API's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import ApiError
from .wire import json_body

if TYPE_CHECKING:
    from .app import Sandbox


def side_door_routes(sandbox: Sandbox) -> list[Route]:
    async def stats(request: Request) -> Response:
        return JSONResponse(sandbox.stats().to_json())

    async def faults(request: Request) -> Response:
        if request.method == "PUT":
            changes = await json_body(request)
            if not isinstance(changes, dict):
                raise ApiError(400, "invalid_request", "The body must be a JSON object of faults")
            try:
                sandbox.faults.update(changes)
            except ValueError as exc:
                raise ApiError(400, "invalid_field", str(exc)) from None
        return JSONResponse(sandbox.faults.to_json())

    async def dispatches(request: Request) -> Response:
        return JSONResponse(
            {
                "dispatches": [
                    {"dispatchId": r.dispatch_id, "path": r.path, "status": r.status}
                    for r in sandbox.dispatches
                ]
            }
        )

    async def requests(request: Request) -> Response:
        key = request.query_params.get("idempotencyKey")
        entries = [r for r in sandbox.requests if key is None or r.idempotency_key == key]
        return JSONResponse({"requests": [r.to_json() for r in entries]})

    async def dispatch(request: Request) -> Response:
        record = sandbox.get_dispatch(request.path_params["dispatch_id"])
        if record is None:
            raise ApiError(404, "dispatch_not_found", "No such dispatch")
        return JSONResponse(record.to_json())

    return [
        Route("/_sandbox/stats", stats, methods=["GET"]),
        Route("/_sandbox/faults", faults, methods=["GET", "PUT"]),
        Route("/_sandbox/dispatches", dispatches, methods=["GET"]),
        Route("/_sandbox/requests", requests, methods=["GET"]),
        Route("/_sandbox/dispatches/{dispatch_id}", dispatch, methods=["GET"]),
    ]
