"""The admin listener's app: liveness, readiness (the store asked on each request, the
circuit reported) and the metrics page."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .config_values import is_loopback
from .core.errors import StoreUnavailable

if TYPE_CHECKING:
    from .app import GatewayApp

READY_CHECK_TIMEOUT = 2.0


def admin_app(gw: GatewayApp) -> Starlette:
    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if not gw.serving:
            store = "ok" if gw.store_up else "opening"
            return JSONResponse({"ready": False, "store": store}, status_code=503)
        store = "ok"
        try:
            await asyncio.wait_for(gw.store.check(), READY_CHECK_TIMEOUT)
        except (StoreUnavailable, TimeoutError) as exc:
            store = "unavailable"
            # The store's own words name hosts and paths: for operators on the machine.
            peer = request.client.host if request.client else ""
            if str(exc) and (gw.settings.readyz_details or is_loopback(peer)):
                store = f"unavailable: {exc}"
        ready = store == "ok" and not gw.draining
        body = {
            "ready": ready,
            "draining": gw.draining,
            "store": store,
            "streams": gw.hub.streams,
            # Reported, not a reason to be unready: an open circuit still accepts and queues.
            "upstream_circuit": gw.gateway.caller.breaker.describe(),
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        page, media_type = gw.metrics.render(request.headers.get("accept", ""))
        return Response(page, media_type=media_type)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ]
    )
