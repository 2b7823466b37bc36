"""The sandbox's Starlette app: the public API's routes (health, templates, account
configuration, validate, dispatch), the side door's, the edge middleware and the error handlers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .catalog import DEFAULT_PROVIDERS, PROVIDERS, SERVICES, TEMPLATES
from .edge import VALIDATE_SEGMENT, Edge
from .errors import ApiError
from .side_door import side_door_routes
from .validation import check_request
from .wire import api_error, http_error, json_body, services

if TYPE_CHECKING:
    from .app import Sandbox


def build_app(sandbox: Sandbox) -> Starlette:
    settings = sandbox.settings

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def templates(request: Request) -> Response:
        found = [t.to_json() for t in TEMPLATES.values()]
        return JSONResponse({"templates": found, "total": len(found)})

    async def template(request: Request) -> Response:
        raw = request.path_params["template_id"]
        found = TEMPLATES.get(int(raw)) if raw.isascii() and raw.isdigit() else None
        if found is None:
            raise ApiError(404, "template_not_found", f"Template {raw[:40]} not found")
        return JSONResponse(found.to_json())

    async def config(request: Request) -> Response:
        return JSONResponse(
            {
                "user": {"email": settings.email},
                "company": {"name": "Sandbox"},
                "defaultProviders": dict(DEFAULT_PROVIDERS),
                "providerOverrides": {},
                "providers": {s: sorted(PROVIDERS[s]) or ["*"] for s in SERVICES},
            }
        )

    async def api_post(request: Request) -> Response:
        segments = request.path_params["rest"].split("/")
        if segments[-1] == VALIDATE_SEGMENT:
            chain = services(segments[:-1], request.url.path)
            body = await json_body(request)
            checked = check_request(
                body, chain, callback_field=settings.callback_field, needs_callback=False
            )
            return JSONResponse(
                {
                    "valid": True,
                    "services": list(checked.services),
                    "service": checked.service,
                    "provider": checked.provider,
                    "template": {"id": checked.template.id, "name": checked.template.name},
                }
            )
        return await sandbox.dispatch(request, services(segments, request.url.path))

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/v1/templates", templates, methods=["GET"]),
        Route("/api/v1/templates/{template_id}", template, methods=["GET"]),
        Route("/api/v1/my/config", config, methods=["GET"]),
        Route("/api/{rest:path}", api_post, methods=["POST"]),
        *side_door_routes(sandbox),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(
                Edge, log=sandbox.request_log, email=settings.email, password=settings.password
            )
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error},
    )
