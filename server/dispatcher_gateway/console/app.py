"""The console's web app: routes, the session and CSRF checks every one goes through, and the
security headers every answer carries."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core import states
from ..core.callbacks import CallbackRules
from ..core.caller import spec_of
from ..core.errors import GatewayError, InvalidArgument
from ..core.model import Job, JobEvent, JobState, Service
from ..core.ports import Store
from ..core.query import JobQuery
from ..core.records import JobRecords
from ..core.retry import RateLimit
from . import views
from .actions import JobActions
from .live import LiveFeed
from .markup import Markup, html
from .operators import Operators
from .sessions import COOKIE, SESSION_TTL, Session, Sessions
from .throttle import LoginGuard

log = logging.getLogger("dispatcher_gateway.console")

STATIC = Path(__file__).parent / "static"
PAGE_SIZE = 50
FAILED_HOURS = 24.0
"""The failed-jobs page looks this far back by default."""
MAX_FAILED = 1000
"""Failed jobs the failed-jobs page (and a group's retry) takes at most."""
MAX_FORM_BYTES = 16 * 1024
HEARTBEAT = 15.0
"""Seconds between comments on an idle event stream, so that proxies keep it open."""
SANDBOX_OPERATOR = "sandbox"
"""Who every visitor is when authentication is off (`serve --sandbox` only)."""
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make a form's Origin "null"
    (b"cross-origin-opener-policy", b"same-origin"),
)


@dataclass(frozen=True)
class ConsoleSources:
    """What the console reads and does, handed in by app.py."""

    store: Store
    records: JobRecords
    callbacks: CallbackRules
    rate: RateLimit
    breaker: Callable[[], Mapping[str, object]]
    outbox: Callable[[], tuple[int, float]]
    """Jobs the outbox holds unsent, and the oldest one's age in seconds."""
    streams: Callable[[], int]
    webhooks_refused: Callable[[], Mapping[str, float]]
    actions: JobActions


class _SecurityHeaders:
    """Adds SECURITY_HEADERS (and no-store, but to the static assets) to every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(SECURITY_HEADERS)
                headers.append((b"cache-control", b"max-age=300" if static else b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


Handler = Callable[[Request, Session], Awaitable[Response]]


class Console:
    def __init__(
        self,
        sources: ConsoleSources,
        feed: LiveFeed,
        sessions: Sessions,
        operators: Operators | None,
        *,
        clock: Callable[[], float] = time.time,
        guard: LoginGuard | None = None,
    ) -> None:
        """`operators` None: no authentication (the sandbox): every visitor is 'sandbox'."""
        self.sources = sources
        self.feed = feed
        self.sessions = sessions
        self.operators = operators
        self.clock = clock
        self.guard = guard or LoginGuard()
        self.started_at = clock()

    def close(self) -> None:
        """The gateway drains: the pages' event streams end (they reconnect elsewhere)."""
        self.feed.close()

    def app(self) -> ASGIApp:
        guarded = self._guarded
        routes = [
            Route("/login", self._login_page, methods=["GET"]),
            Route("/login", self._login, methods=["POST"]),
            Route("/logout", guarded(self._logout), methods=["POST"]),
            Route("/", guarded(self._overview), methods=["GET"]),
            Route("/jobs", guarded(self._jobs), methods=["GET"]),
            Route("/jobs/{job_id}", guarded(self._job), methods=["GET"]),
            Route("/jobs/{job_id}/retry", guarded(self._retry), methods=["POST"]),
            Route("/jobs/{job_id}/cancel", guarded(self._cancel), methods=["POST"]),
            Route("/failed", guarded(self._failed), methods=["GET"]),
            Route("/failed/retry", guarded(self._retry_group), methods=["POST"]),
            Route("/events", guarded(self._events), methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        return _SecurityHeaders(Starlette(routes=routes))

    # Sessions, authentication, CSRF

    def _session_of(self, request: Request) -> Session | None:
        session = self.sessions.load(request.cookies.get(COOKIE))
        if self.operators is None:
            return session if session and session.operator else self.sessions.new(SANDBOX_OPERATOR)
        return session

    def _with_cookie(self, response: Response, request: Request, session: Session) -> Response:
        response.set_cookie(
            COOKIE,
            self.sessions.dump(session),
            max_age=int(SESSION_TTL),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def _form(self, request: Request, session: Session) -> dict[str, str]:
        """A POST's form, once its origin and CSRF token are checked."""
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            raise _Refused(403, "this form was sent from another site")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise _Refused(413, "form too large")
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not self.sessions.csrf_ok(session, form.get("csrf", "")):
            peer = request.client.host if request.client else "?"
            log.warning(
                "console: POST %s refused: no valid CSRF token (operator %r, from %s)",
                request.url.path,
                session.operator,
                peer,
            )
            raise _Refused(403, "the form's CSRF token is missing or not this session's")
        return form

    def _guarded(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            session = self._session_of(request)
            if session is None or not session.operator:
                if request.method == "GET" and request.url.path != "/events":
                    return RedirectResponse("/login", status_code=303)
                return HTMLResponse(views.message("log in first"), status_code=401)
            try:
                response = await handler(request, session)
            except _Refused as exc:
                response = HTMLResponse(
                    self._page(session, "Refused", views.message(str(exc))), status_code=exc.status
                )
            if self.operators is None:
                response = self._with_cookie(response, request, session)
            return response

        return guarded

    def _page(self, session: Session, title: str, body: Markup, live: str = "") -> Markup:
        return views.page(
            title,
            body,
            operator=session.operator,
            csrf=self.sessions.csrf(session),
            live=live,
        )

    async def _login_page(self, request: Request) -> Response:
        session = self.sessions.load(request.cookies.get(COOKIE))
        if self.operators is None or (session and session.operator):
            return RedirectResponse("/", status_code=303)
        session = session or self.sessions.new()
        page = views.login(self.sessions.csrf(session))
        return self._with_cookie(HTMLResponse(page), request, session)

    async def _login(self, request: Request) -> Response:
        if self.operators is None:
            return RedirectResponse("/", status_code=303)
        operators = self.operators
        session = self.sessions.load(request.cookies.get(COOKIE)) or self.sessions.new()
        try:
            form = await self._form(request, session)
        except _Refused as exc:
            return HTMLResponse(views.message(str(exc)), status_code=exc.status)
        name, password = form.get("operator", ""), form.get("password", "")
        peer = request.client.host if request.client else "?"
        wait = self.guard.wait(peer, name[:128])
        if wait > 0:
            seconds = math.ceil(wait)
            text = f"Too many failed logins: try again in {seconds} s."
            page = views.login(self.sessions.csrf(session), text)
            return HTMLResponse(page, status_code=429, headers={"Retry-After": str(seconds)})
        self.guard.attempt(peer, name[:128])
        if not await asyncio.to_thread(operators.check, name, password):
            log.warning("console: failed login as %r from %s", name[:128], peer)
            page = views.login(self.sessions.csrf(session), "Unknown operator or wrong password.")
            return HTMLResponse(page, status_code=401)
        self.guard.succeeded(peer, name[:128])
        log.info("console: operator %s logged in", name)
        new = self.sessions.new(name)
        return self._with_cookie(RedirectResponse("/", status_code=303), request, new)

    async def _logout(self, request: Request, session: Session) -> Response:
        await self._form(request, session)
        log.info("console: operator %s logged out", session.operator)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # Pages

    async def _overview(self, request: Request, session: Session) -> Response:
        s = self.sources
        depth, oldest = s.outbox()
        body = views.overview(
            views.Overview(
                outbox_depth=depth,
                outbox_oldest=oldest,
                rate_used=self.feed.upstream_requests_in_window(),
                rate_limit=s.rate.limit,
                rate_window=s.rate.window,
                breaker=s.breaker(),
                streams=s.streams(),
                console_streams=self.feed.listeners,
                webhooks_refused=s.webhooks_refused(),
                ended=self.feed.ended_last_hour(),
                since=max(self.started_at, self.clock() - 3600.0),
            )
        )
        return self._answer(request, session, "Overview", body, "/")

    def _answer(
        self, request: Request, session: Session, title: str, body: Markup, live: str
    ) -> Response:
        """The whole page, or only its live part when the page's script asks for it again."""
        if request.query_params.get("fragment"):
            return HTMLResponse(body)
        return HTMLResponse(self._page(session, title, html('<div id="live">{}</div>', body), live))

    async def _jobs(self, request: Request, session: Session) -> Response:
        params = {
            k: request.query_params.get(k, "").strip()
            for k in ("client", "service", "state", "from", "to", "page")
        }
        try:
            query = _job_query(params)
            jobs, token = await self.sources.store.find_jobs(
                query, limit=PAGE_SIZE, page_token=params["page"]
            )
        except (InvalidArgument, ValueError) as exc:
            raise _Refused(400, f"bad filter: {exc}") from None
        shown = {k: v for k, v in params.items() if v}
        rows = views.job_rows(jobs, token, shown)
        live = "/jobs?" + urlencode(shown)
        if request.query_params.get("fragment"):
            return HTMLResponse(rows)
        body = html('{}<div id="live">{}</div>', views.job_filters(params), rows)
        return HTMLResponse(self._page(session, "Jobs", body, live))

    async def _load(self, job_id: str) -> Job:
        job = await self.sources.store.get_job(job_id)
        if job is None:
            raise _Refused(404, f"no job {job_id}")
        return job

    async def _job(self, request: Request, session: Session) -> Response:
        job = await self._load(request.path_params["job_id"])
        events = [e async for e in self.sources.records.events_of(job)]
        attempts = await self.sources.records.attempts(job)
        body = views.timeline(
            job, events, attempts, self._callback(job, events), self.sessions.csrf(session)
        )
        return self._answer(request, session, f"Job {job.job_id}", body, f"/jobs/{job.job_id}")

    def _callback(self, job: Job, events: list[JobEvent]) -> views.Callback:
        rules = self.sources.callbacks
        if not rules.calls_back(spec_of(job)):
            return views.Callback(False, "", None)
        submitted = next((e for e in events if e.type == states.SUBMITTED), None)
        deadline = None
        if submitted is not None:
            deadline = (submitted.record_time or submitted.event_time) + rules.deadline(
                job.services
            )
        if job.error is not None and job.error.code == states.OVERDUE:
            state = "overdue: no terminal webhook came in time"
        elif job.state.terminal:
            state = f"ended ({job.last_event})"
        elif submitted is None:
            state = "not submitted yet"
        else:
            state = "waiting for the terminal webhook"
        return views.Callback(True, state, deadline)

    async def _failed_jobs(self, hours: float) -> dict[str, list[Job]]:
        query = JobQuery(
            states=frozenset({JobState.FAILED}), created_from=self.clock() - hours * 3600
        )
        found: list[Job] = []
        token = ""
        while len(found) < MAX_FAILED:
            page, token = await self.sources.store.find_jobs(
                query, limit=min(PAGE_SIZE * 4, MAX_FAILED - len(found)), page_token=token
            )
            found.extend(page)
            if not token:
                break
        groups: dict[str, list[Job]] = {}
        for job in found:
            if job.retried_by:
                continue  # retried already: the new job stands for it
            groups.setdefault(job.error.code if job.error else "failed", []).append(job)
        return groups

    async def _failed(self, request: Request, session: Session) -> Response:
        hours = _hours(request.query_params.get("hours"))
        groups = await self._failed_jobs(hours)
        body = views.failed_groups(groups, hours, self.sessions.csrf(session))
        return self._answer(request, session, "Failed jobs", body, f"/failed?hours={hours:g}")

    async def _events(self, request: Request, session: Session) -> Response:
        listener = self.feed.listen()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        message = await asyncio.wait_for(listener.queue.get(), HEARTBEAT)
                    except TimeoutError:
                        yield ": idle\n\n"
                        continue
                    if message is None:
                        return
                    yield f"data: {message}\n\n"
            finally:
                self.feed.forget(listener)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"}
        )

    # Actions

    async def _act(
        self, session: Session, action: str, job: Job, call: Callable[[Job], Awaitable[Job]]
    ) -> Job:
        try:
            after = await call(job)
        except GatewayError as exc:
            log.info(
                "console: operator %s could not %s job %s (client %s): %s",
                session.operator,
                action,
                job.job_id,
                job.client,
                exc,
            )
            raise _Refused(409, f"cannot {action} job {job.job_id}: {exc}") from None
        log.info(
            "console: operator %s did %s on job %s (client %s)%s",
            session.operator,
            action,
            job.job_id,
            job.client,
            f": new job {after.job_id}" if after.job_id != job.job_id else "",
        )
        return after

    async def _retry(self, request: Request, session: Session) -> Response:
        await self._form(request, session)
        job = await self._load(request.path_params["job_id"])
        new = await self._act(session, "retry", job, self.sources.actions.retry)
        return RedirectResponse(f"/jobs/{new.job_id}", status_code=303)

    async def _cancel(self, request: Request, session: Session) -> Response:
        await self._form(request, session)
        job = await self._load(request.path_params["job_id"])
        await self._act(session, "cancel", job, self.sources.actions.cancel)
        return RedirectResponse(f"/jobs/{job.job_id}", status_code=303)

    async def _retry_group(self, request: Request, session: Session) -> Response:
        form = await self._form(request, session)
        code = form.get("code", "")
        hours = _hours(form.get("hours"))
        jobs = (await self._failed_jobs(hours)).get(code, [])
        log.info(
            "console: operator %s retries the %d failed jobs of group %r",
            session.operator,
            len(jobs),
            code,
        )
        lines = []
        for job in jobs:
            try:
                new = await self._act(session, "retry", job, self.sources.actions.retry)
                lines.append((job.job_id, f"retried as {new.job_id}", f"/jobs/{new.job_id}"))
            except _Refused as exc:
                lines.append((job.job_id, str(exc), f"/jobs/{job.job_id}"))
        body = views.results(lines)
        return HTMLResponse(self._page(session, f"Retried group {code}", body))


def _hours(text: str | None) -> float:
    try:
        hours = float(text or FAILED_HOURS)
    except ValueError:
        return FAILED_HOURS
    return hours if 0 < hours <= 24 * 90 else FAILED_HOURS


def _time(text: str) -> float | None:
    """A datetime-local field's value (no zone: UTC) as seconds since the epoch."""
    if not text:
        return None
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _job_query(params: Mapping[str, str]) -> JobQuery:
    return JobQuery(
        client=params["client"],
        services=frozenset({Service(params["service"])}) if params["service"] else frozenset(),
        states=frozenset({JobState(params["state"])}) if params["state"] else frozenset(),
        created_from=_time(params["from"]),
        created_before=_time(params["to"]),
    )
