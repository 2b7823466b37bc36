"""The console's pages as HTML: every value escaped (markup.py), every payload redacted
(redact.py). No inline script or style: the Content-Security-Policy forbids them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from ..core.model import Job, JobEvent, JobState, Service, UpstreamAttempt
from .markup import Markup, html, join
from .redact import redact

NAV = (("/", "Overview"), ("/jobs", "Jobs"), ("/failed", "Failed"))


def when(seconds: float | None) -> str:
    if not seconds:
        return ""
    return (
        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
        + f".{int(seconds % 1 * 1000):03d}Z"
    )


def payload(value: Any) -> Markup:
    return html(
        '<pre class="payload">{}</pre>', json.dumps(redact(value), indent=2, sort_keys=True)
    )


def page(title: str, body: Markup, *, operator: str, csrf: str, live: str = "") -> Markup:
    """A whole page. `live`: the fragment URL the page's script fetches again when an event of
    the feed concerns it ('' for a page that does not follow the feed)."""
    links = join(html('<a href="{}">{}</a>', href, text) for href, text in NAV)
    who = (
        html(
            '<span class="who">{}</span><form method="post" action="/logout">'
            '<input type="hidden" name="csrf" value="{}"><button>Log out</button></form>',
            operator,
            csrf,
        )
        if operator
        else Markup("")
    )
    return html(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>{title} · dispatcher-gateway</title>"
        '<link rel="stylesheet" href="/static/console.css">'
        '<script src="/static/console.js" defer></script></head>'
        '<body data-live="{live}"><header><strong>dispatcher-gateway</strong>'
        "<nav>{links}</nav>{who}</header><main><h1>{title}</h1>{body}</main>"
        '<footer><span id="feed-state">live: connecting</span></footer></body></html>',
        title=title,
        live=live,
        links=links,
        who=who,
        body=body,
    )


def login(csrf: str, error: str = "") -> Markup:
    problem = html('<p class="error" role="alert">{}</p>', error) if error else Markup("")
    return html(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>Log in · dispatcher-gateway</title>"
        '<link rel="stylesheet" href="/static/console.css"></head>'
        '<body class="login"><main><h1>dispatcher-gateway console</h1>{}'
        '<form method="post" action="/login" id="login">'
        '<input type="hidden" name="csrf" value="{}">'
        '<label>Operator <input name="operator" autocomplete="username" required></label>'
        '<label>Password <input name="password" type="password" '
        'autocomplete="current-password" required></label>'
        "<button>Log in</button></form></main></body></html>",
        problem,
        csrf,
    )


def message(text: str) -> Markup:
    return html('<p class="error" role="alert">{}</p>', text)


@dataclass(frozen=True, slots=True)
class Overview:
    outbox_depth: int
    outbox_oldest: float
    rate_used: int
    rate_limit: int
    rate_window: float
    breaker: Mapping[str, object]
    streams: int
    console_streams: int
    webhooks_refused: Mapping[str, float]
    ended: Mapping[str, int]
    since: float


def overview(o: Overview) -> Markup:
    refused = join(
        html("<tr><td>{}</td><td>{}</td></tr>", reason, f"{count:g}")
        for reason, count in sorted(o.webhooks_refused.items())
    ) or Markup('<tr><td colspan="2">none</td></tr>')
    ended = join(
        html('<tr><td>{}</td><td class="n" data-state="{}">{}</td></tr>', state, state, count)
        for state, count in sorted(o.ended.items())
    ) or Markup('<tr><td colspan="2">none</td></tr>')
    breaker = str(o.breaker.get("state", ""))
    return html(
        '<div class="cards">'
        '<section><h2>Outbox</h2><p class="big" id="outbox-depth">{depth}</p>'
        "<p>jobs queued, not yet sent; oldest {oldest} s</p></section>"
        '<section><h2>Upstream rate</h2><p class="big">{used} / {limit}</p>'
        "<p>requests in the last {window} s, against the account's limit</p></section>"
        '<section><h2>Circuit breaker</h2><p class="big state-{breaker}">{breaker}</p>'
        "<p>{failures} consecutive failures; opened {opened} times</p></section>"
        '<section><h2>Open streams</h2><p class="big">{streams}</p>'
        "<p>Subscribe and WatchJob on this replica ({console} console pages)</p></section>"
        "</div>"
        '<div class="cards">'
        "<section><h2>Webhooks refused, by reason</h2><table>{refused}</table></section>"
        '<section><h2>Jobs ended in the last hour</h2><table id="ended">{ended}</table>'
        "<p>counted by this replica since {since}</p></section></div>",
        depth=o.outbox_depth,
        oldest=f"{o.outbox_oldest:.1f}",
        used=o.rate_used,
        limit=o.rate_limit,
        window=f"{o.rate_window:g}",
        breaker=breaker,
        failures=o.breaker.get("consecutive_failures", 0),
        opened=o.breaker.get("times_opened", 0),
        streams=o.streams,
        console=o.console_streams,
        refused=refused,
        ended=ended,
        since=when(o.since),
    )


def job_filters(params: Mapping[str, str], clients_hint: Sequence[str] = ()) -> Markup:
    def options(values: Iterable[str], chosen: str) -> Markup:
        return join(
            html(
                '<option value="{}"{}>{}</option>',
                v,
                Markup(" selected" if v == chosen else ""),
                v or "any",
            )
            for v in ("", *values)
        )

    return html(
        '<form method="get" action="/jobs" class="filters" id="filters">'
        '<label>Client <input name="client" value="{client}"></label>'
        '<label>Service <select name="service">{services}</select></label>'
        '<label>State <select name="state">{states}</select></label>'
        '<label>Created from (UTC) <input name="from" type="datetime-local" value="{frm}"></label>'
        '<label>to <input name="to" type="datetime-local" value="{to}"></label>'
        "<button>Filter</button></form>",
        client=params.get("client", ""),
        services=options((s.value for s in Service), params.get("service", "")),
        states=options((s.value for s in JobState), params.get("state", "")),
        frm=params.get("from", ""),
        to=params.get("to", ""),
    )


def _fields(job: Job) -> dict[str, str]:
    """What a job's row and its page both show of it."""
    return {
        "id": job.job_id,
        "client": job.client,
        "service": "/".join(s.value for s in job.services),
        "mode": job.mode.value,
        "state": job.state.value,
        "created": when(job.created_at),
        "updated": when(job.updated_at),
    }


def job_rows(jobs: Sequence[Job], next_token: str, params: Mapping[str, str]) -> Markup:
    rows = join(
        html(
            '<tr data-job="{id}"><td><a href="/jobs/{id}">{id}</a></td><td>{client}</td>'
            '<td>{service}</td><td>{mode}</td><td class="state state-{state}">{state}</td>'
            "<td>{created}</td><td>{updated}</td><td>{error}</td></tr>",
            **_fields(job),
            error=job.error.code if job.error else "",
        )
        for job in jobs
    ) or Markup('<tr><td colspan="8">no job matches</td></tr>')
    more = Markup("")
    if next_token:
        query = urlencode({**{k: v for k, v in params.items() if k != "page"}, "page": next_token})
        more = html('<p><a href="/jobs?{}" id="next-page">Older jobs</a></p>', query)
    return html(
        '<table class="jobs"><thead><tr><th>Job</th><th>Client</th><th>Service</th>'
        "<th>Mode</th><th>State</th><th>Created</th><th>Updated</th><th>Error</th></tr>"
        '</thead><tbody id="job-rows">{}</tbody></table>{}',
        rows,
        more,
    )


@dataclass(frozen=True, slots=True)
class Callback:
    expected: bool
    state: str
    deadline: float | None


def timeline(
    job: Job,
    events: Sequence[JobEvent],
    attempts: Sequence[UpstreamAttempt],
    callback: Callback,
    csrf: str,
) -> Markup:
    actions = Markup("")
    if job.retried_by:
        actions = html(
            '<p class="action">Retried as <a href="/jobs/{}" id="retried-by">{}</a></p>',
            job.retried_by,
            job.retried_by,
        )
    elif job.state is JobState.FAILED:
        actions = html(
            '<form method="post" action="/jobs/{}/retry" class="action">'
            '<input type="hidden" name="csrf" value="{}"><button id="retry">Retry</button></form>',
            job.job_id,
            csrf,
        )
    elif job.state is JobState.QUEUED and not job.submit_begun_at:
        actions = html(
            '<form method="post" action="/jobs/{}/cancel" class="action">'
            '<input type="hidden" name="csrf" value="{}">'
            '<button id="cancel">Cancel</button></form>',
            job.job_id,
            csrf,
        )
    attempt_rows = join(
        html(
            '<tr class="attempt"><td>{}</td><td>{}</td><td>{}</td><td class="status">{}</td>'
            '<td>{} ms</td><td class="request-id">{}</td><td>{}</td></tr>',
            when(a.time),
            a.endpoint,
            a.mode.value,
            a.http_status or "no answer",
            f"{a.latency * 1000:.0f}",
            a.request_id,
            a.error_code,
        )
        for a in attempts
    ) or Markup('<tr><td colspan="7">none yet</td></tr>')
    event_rows = join(
        html(
            '<tr class="event"><td>{}</td><td>{}</td><td>{}</td><td class="state state-{}">{}</td>'
            "<td>{}</td></tr>",
            e.cursor,
            when(e.record_time),
            e.type,
            e.state.value,
            e.state.value,
            payload(e.data),
        )
        for e in events
    )
    if callback.expected:
        deadline = when(callback.deadline) if callback.deadline else "from its submission"
        callback_text = html("{}; deadline {}", callback.state, deadline)
    else:
        callback_text = Markup("not expected: the upstream's answer is the job's end (sync)")
    error = payload(job.error.to_json()) if job.error else Markup("none")
    return html(
        '<div class="job-head"><dl>'
        "<dt>Job</dt><dd>{id}</dd><dt>Client</dt><dd>{client}</dd>"
        "<dt>Service</dt><dd>{service}</dd><dt>Mode</dt><dd>{mode}</dd>"
        '<dt>State</dt><dd class="state state-{state}" id="job-state">{state}</dd>'
        "<dt>Created</dt><dd>{created}</dd><dt>Updated</dt><dd>{updated}</dd>"
        "<dt>Dispatch id</dt><dd>{dispatch}</dd>{retry_of}"
        '<dt>Callback</dt><dd id="callback">{callback}</dd></dl>{actions}</div>'
        "<h2>Upstream attempts</h2>"
        '<table class="attempts"><thead><tr><th>Sent</th><th>Endpoint</th><th>Mode</th>'
        "<th>Status</th><th>Latency</th><th>Request id</th><th>Error</th></tr></thead>"
        "<tbody>{attempts}</tbody></table>"
        '<h2>Events</h2><table class="events"><thead><tr><th>Cursor</th><th>Recorded</th>'
        "<th>Type</th><th>State</th><th>Payload</th></tr></thead><tbody>{events}</tbody></table>"
        "<h2>Error</h2>{error}<h2>Request</h2>{request}<h2>Metadata</h2>{metadata}",
        **_fields(job),
        dispatch=job.dispatch_id or "none yet",
        retry_of=html(
            '<dt>Retry of</dt><dd><a href="/jobs/{}" id="retry-of">{}</a></dd>',
            job.retry_of,
            job.retry_of,
        )
        if job.retry_of
        else Markup(""),
        callback=callback_text,
        actions=actions,
        attempts=attempt_rows,
        events=event_rows,
        error=error,
        request=payload(job.body),
        metadata=payload(dict(job.metadata)),
    )


def failed_groups(groups: Mapping[str, Sequence[Job]], hours: float, csrf: str) -> Markup:
    if not groups:
        return html("<p>No job failed in the last {} hours.</p>", f"{hours:g}")
    sections = []
    for code, jobs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        first = jobs[0].error
        rows = join(
            html(
                '<tr data-job="{id}"><td><a href="/jobs/{id}">{id}</a></td><td>{client}</td>'
                "<td>{service}</td><td>{when}</td><td>{message}</td><td>"
                '<form method="post" action="/jobs/{id}/retry" class="action">'
                '<input type="hidden" name="csrf" value="{csrf}">'
                '<button class="retry-one">Retry</button></form></td></tr>',
                id=job.job_id,
                client=job.client,
                service=job.service.value,
                when=when(job.updated_at),
                message=redact(job.error.message) if job.error else "",
                csrf=csrf,
            )
            for job in jobs
        )
        sections.append(
            html(
                '<section class="group" data-code="{code}"><h2>{code} <small>{count} jobs'
                "{status}</small></h2>"
                '<form method="post" action="/failed/retry" class="action">'
                '<input type="hidden" name="csrf" value="{csrf}">'
                '<input type="hidden" name="code" value="{code}">'
                '<input type="hidden" name="hours" value="{hours}">'
                '<button class="retry-group">Retry all {count}</button></form>'
                "<table><thead><tr><th>Job</th><th>Client</th><th>Service</th><th>Failed</th>"
                "<th>Message</th><th></th></tr></thead><tbody>{rows}</tbody></table></section>",
                code=code,
                count=len(jobs),
                status=f", HTTP {first.http_status}" if first and first.http_status else "",
                csrf=csrf,
                hours=f"{hours:g}",
                rows=rows,
            )
        )
    return join(sections)


def results(lines: Sequence[tuple[str, str, str]]) -> Markup:
    """What an action did, one line per job: (job, outcome, link)."""
    rows = join(
        html('<li><a href="{}">{}</a>: {}</li>', link, job, outcome) for job, outcome, link in lines
    )
    return html('<ul class="results">{}</ul><p><a href="/failed">Back to failed jobs</a></p>', rows)
