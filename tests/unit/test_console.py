"""The console's web app in process (httpx's ASGI transport): authentication, CSRF, escaping
and redaction, the security headers. The browser tests (tests/browser) show it in chromium."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from dispatcher_gateway.console import (
    Console,
    ConsoleSources,
    LiveFeed,
    Operators,
    Sessions,
)
from dispatcher_gateway.console.operators import hash_password
from dispatcher_gateway.console.sessions import COOKIE
from dispatcher_gateway.console.throttle import LIMIT as LOGIN_LIMIT
from dispatcher_gateway.core import states
from dispatcher_gateway.core.callbacks import CallbackRules
from dispatcher_gateway.core.model import Job, UpstreamFailure
from dispatcher_gateway.core.records import JobRecords
from dispatcher_gateway.core.retry import RateLimit
from dispatcher_gateway.store import MemoryStore
from tests.support.builders import CLIENT, create, event_for

OPERATOR, PASSWORD = "ops", "s3cret-operator-password"
BASE = "http://console.test"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Retries:
    """JobActions that records what it was asked, and answers with the job itself."""

    asked: list[str] = field(default_factory=list)

    async def retry(self, job: Job) -> Job:
        self.asked.append(job.job_id)
        return job

    async def cancel(self, job: Job) -> Job:
        self.asked.append(job.job_id)
        return job


@dataclass
class Setup:
    store: MemoryStore
    client: httpx.AsyncClient
    actions: Retries


def sources(store: MemoryStore, actions: Retries) -> ConsoleSources:
    def refused() -> Mapping[str, float]:
        return {"unauthorized": 3.0}

    return ConsoleSources(
        store=store,
        records=JobRecords(store, lambda: 0.0),
        callbacks=CallbackRules(),
        rate=RateLimit(100, 60.0),
        breaker=lambda: {"state": "closed", "consecutive_failures": 0, "times_opened": 0},
        outbox=lambda: (2, 1.5),
        streams=lambda: 4,
        webhooks_refused=refused,
        actions=actions,
    )


@pytest.fixture
async def setup(tmp_path: object) -> AsyncIterator[Setup]:
    store = MemoryStore()
    await store.open()
    actions = Retries()
    operators = Operators.load(_operators_file(tmp_path))
    console = Console(
        sources(store, actions), LiveFeed(rate_window=60.0), Sessions(b"k" * 32), operators
    )
    transport = httpx.ASGITransport(app=console.app())
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield Setup(store, client, actions)
    await store.close()


def _operators_file(tmp_path: object) -> str:
    path = Path(str(tmp_path)) / "operators"
    path.write_text(f"# who may log in\n{OPERATOR} {hash_password(PASSWORD)}\n")
    return str(path)


async def log_in(client: httpx.AsyncClient, name: str = OPERATOR, password: str = PASSWORD) -> str:
    page = await client.get("/login")
    csrf = CSRF.search(page.text)
    assert csrf is not None
    answer = await client.post(
        "/login", data={"csrf": csrf.group(1), "operator": name, "password": password}
    )
    return str(answer.status_code)


async def csrf_of(client: httpx.AsyncClient, path: str) -> str:
    found = CSRF.search((await client.get(path)).text)
    assert found is not None
    return found.group(1)


async def test_every_page_but_the_login_asks_for_a_login(setup: Setup) -> None:
    for path in ("/", "/jobs", "/failed", "/jobs/job-1"):
        answer = await setup.client.get(path)
        assert (answer.status_code, answer.headers["location"]) == (303, "/login")
    assert (await setup.client.get("/events")).status_code == 401


async def test_an_operator_logs_in_with_a_cookie_scripts_cannot_read(setup: Setup) -> None:
    await setup.client.get("/login")
    csrf = CSRF.search((await setup.client.get("/login")).text)
    assert csrf is not None
    answer = await setup.client.post(
        "/login", data={"csrf": csrf.group(1), "operator": OPERATOR, "password": PASSWORD}
    )

    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "secure" not in cookie  # plain HTTP here: Secure is set when served over TLS
    assert (await setup.client.get("/")).status_code == 200


async def test_a_wrong_password_and_an_unknown_name_are_refused_alike(setup: Setup) -> None:
    assert await log_in(setup.client, OPERATOR, "wrong") == "401"
    assert await log_in(setup.client, "nobody", PASSWORD) == "401"
    assert (await setup.client.get("/")).status_code == 303


async def test_a_login_without_the_csrf_token_is_refused(setup: Setup) -> None:
    await setup.client.get("/login")
    answer = await setup.client.post("/login", data={"operator": OPERATOR, "password": PASSWORD})
    assert answer.status_code == 403


async def test_every_answer_carries_a_strict_content_security_policy(setup: Setup) -> None:
    await log_in(setup.client)
    for path in ("/login", "/", "/jobs", "/static/console.js"):
        policy = (await setup.client.get(path)).headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "default-src 'none'" in policy
        assert "unsafe-inline" not in policy


async def test_pages_hold_no_inline_script_or_style(setup: Setup) -> None:
    await log_in(setup.client)
    await create(setup.store)
    for path in ("/", "/jobs", "/failed"):
        text = (await setup.client.get(path)).text
        assert "<script>" not in text
        assert "<style" not in text
        assert " style=" not in text
        assert " onclick" not in text


async def test_a_payload_is_shown_escaped_and_redacted(setup: Setup) -> None:
    await log_in(setup.client)
    job = await create(setup.store)
    hostile = {"note": "<script>alert(1)</script>", "password": "hunter2", "phone": "+33600000000"}
    await setup.store.append_event(
        event_for(job, "letter_created", data=hostile), dedupe_key=None, apply=states.apply_event
    )

    text = (await setup.client.get(f"/jobs/{job.job_id}")).text

    assert "<script>alert(1)" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "hunter2" not in text
    assert "+33600000000" not in text
    assert "a@example.com" not in text  # the request's recipient (builders' job)


async def test_a_post_without_the_sessions_csrf_token_does_nothing(setup: Setup) -> None:
    await log_in(setup.client)
    job = await create(setup.store)
    await setup.store.append_event(
        event_for(job, states.FAILED, data=UpstreamFailure("provider_error", "no").to_json()),
        dedupe_key=None,
        apply=states.apply_event,
    )

    missing = await setup.client.post(f"/jobs/{job.job_id}/retry", data={})
    forged = await setup.client.post(f"/jobs/{job.job_id}/retry", data={"csrf": "A" * 43})
    assert (missing.status_code, forged.status_code) == (403, 403)
    assert setup.actions.asked == []

    csrf = await csrf_of(setup.client, f"/jobs/{job.job_id}")
    answer = await setup.client.post(f"/jobs/{job.job_id}/retry", data={"csrf": csrf})
    assert answer.status_code == 303
    assert setup.actions.asked == [job.job_id]


async def test_a_post_from_another_origin_is_refused_even_with_the_token(setup: Setup) -> None:
    await log_in(setup.client)
    job = await create(setup.store)
    csrf = await csrf_of(setup.client, "/")
    answer = await setup.client.post(
        f"/jobs/{job.job_id}/cancel",
        data={"csrf": csrf},
        headers={"origin": "https://evil.example"},
    )
    assert answer.status_code == 403
    assert setup.actions.asked == []


async def test_a_forged_cookie_is_no_session(setup: Setup) -> None:
    setup.client.cookies.set(COOKIE, "eyJ4Ijoib3BzIn0.c2lnbmF0dXJl")
    assert (await setup.client.get("/")).status_code == 303


async def test_the_overview_shows_what_the_gateway_reports(setup: Setup) -> None:
    await log_in(setup.client)
    text = (await setup.client.get("/")).text
    assert 'id="outbox-depth">2<' in text
    assert "0 / 100" in text
    assert "unauthorized" in text


async def test_jobs_are_filtered_by_client(setup: Setup) -> None:
    await log_in(setup.client)
    mine = await create(setup.store, CLIENT)
    theirs = await create(setup.store, "crm")
    text = (await setup.client.get("/jobs", params={"client": CLIENT})).text
    assert mine.job_id in text
    assert theirs.job_id not in text
    bad = await setup.client.get("/jobs", params={"state": "nope"})
    assert bad.status_code == 400


async def fail(store: MemoryStore, job: Job, code: str, status: int) -> None:
    failure = UpstreamFailure(code, f"refused, write to ops@example.com ({code})", status)
    await store.append_event(
        event_for(job, states.FAILED, data=failure.to_json()),
        dedupe_key=None,
        apply=states.apply_event,
    )


async def test_failed_jobs_are_grouped_by_error_code(setup: Setup) -> None:
    await log_in(setup.client)
    refused = [await create(setup.store) for _ in range(2)]
    broken = await create(setup.store)
    for job in refused:
        await fail(setup.store, job, "provider_error", 417)
    await fail(setup.store, broken, "invalid_request", 400)
    await create(setup.store)  # queued: not on the page

    text = (await setup.client.get("/failed")).text

    groups = re.findall(r'data-code="([^"]+)"><h2>[^<]+<small>(\d+) jobs', text)
    assert groups == [("provider_error", "2"), ("invalid_request", "1")]
    assert "ops@example.com" not in text


async def test_a_group_is_retried_whole(setup: Setup) -> None:
    await log_in(setup.client)
    refused = [await create(setup.store) for _ in range(2)]
    other = await create(setup.store)
    for job in refused:
        await fail(setup.store, job, "provider_error", 417)
    await fail(setup.store, other, "invalid_request", 400)
    csrf = await csrf_of(setup.client, "/failed")

    answer = await setup.client.post(
        "/failed/retry", data={"csrf": csrf, "code": "provider_error", "hours": "24"}
    )

    assert answer.status_code == 200
    assert sorted(setup.actions.asked) == sorted(j.job_id for j in refused)


async def test_jobs_are_filtered_by_creation_time(setup: Setup) -> None:
    await log_in(setup.client)
    old = await create(setup.store, created_at=1_700_000_000.0)  # 2023-11-14T22:13:20Z
    new = await create(setup.store, created_at=1_800_000_000.0)  # 2027-01-15
    text = (await setup.client.get("/jobs", params={"to": "2024-01-01T00:00"})).text
    assert old.job_id in text
    assert new.job_id not in text
    text = (await setup.client.get("/jobs", params={"from": "2024-01-01T00:00"})).text
    assert old.job_id not in text
    assert new.job_id in text


async def test_failed_logins_past_the_limit_are_refused_before_the_password_is_checked(
    setup: Setup,
) -> None:
    for _ in range(LOGIN_LIMIT):
        assert await log_in(setup.client, OPERATOR, "wrong") == "401"

    csrf = await csrf_of(setup.client, "/login")
    answer = await setup.client.post(
        "/login", data={"csrf": csrf, "operator": OPERATOR, "password": PASSWORD}
    )

    assert answer.status_code == 429
    assert 0 < int(answer.headers["retry-after"]) <= 60
    assert "Too many failed logins" in answer.text
    assert (await setup.client.get("/")).status_code == 303  # the right password did not count


async def test_guesses_sent_at_once_are_counted_before_their_passwords_are_hashed(
    setup: Setup,
) -> None:
    form = {
        "csrf": await csrf_of(setup.client, "/login"),
        "operator": OPERATOR,
        "password": "wrong",
    }

    answers = await asyncio.gather(*(setup.client.post("/login", data=form) for _ in range(20)))

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [401] * LOGIN_LIMIT + [429] * (20 - LOGIN_LIMIT)
