"""The console, seen in headless chromium: a job dispatched over gRPC appears and ends live, its
timeline shows its upstream attempts; only operators log in; a POST without the session's CSRF
token is refused. (test_console_actions.py: the retry and cancel buttons.)

Each scenario runs in a thread (Selenium blocks), while the sandbox it uses serves from the
test's event loop."""

from __future__ import annotations

import asyncio

import httpx

from tests.support.console import (
    CLIENT,
    CLIENT_TOKEN,
    OPERATOR,
    OPERATOR_PASSWORD,
    Browser,
    ConsoleGateway,
    dispatch,
)


def row_state(b: Browser, job_id: str) -> str:
    return b.text(f'tr[data-job="{job_id}"] td.state')


async def test_a_dispatched_job_appears_and_ends_live_and_shows_its_attempts(
    console: ConsoleGateway, browser: Browser
) -> None:
    browser.base = console.url

    def scenario() -> None:
        b = browser
        b.log_in(OPERATOR, OPERATOR_PASSWORD)
        b.wait(lambda d: b.all("#outbox-depth"), "the overview after the login")
        b.live()
        b.shot("01-overview")

        b.open("/jobs")
        b.live()
        b.mark()
        # The upstream answers 429 until told otherwise: the job waits, queued, in plain view.
        console.sandbox.sandbox.faults.update({"rate_limit_rate": 1.0})
        job_id = dispatch(console)
        b.wait(lambda d: row_state(b, job_id) == "queued", "the new job's row, live")
        b.shot("02-jobs-live")
        console.sandbox.sandbox.faults.update({"rate_limit_rate": 0.0})
        b.wait(lambda d: row_state(b, job_id) == "succeeded", "the job's end, live")
        # The same page all along: its script swapped the rows in, nothing reloaded it.
        assert b.marked()
        b.shot("03-jobs-ended")

        b.click(f'tr[data-job="{job_id}"] a')
        b.wait(lambda d: b.text("#job-state") == "succeeded", "the timeline")
        request_ids = b.texts("tr.attempt .request-id")
        *refused, accepted = b.texts("tr.attempt .status")
        assert accepted == "200"
        assert set(refused) <= {"429"}
        sent = [r.request_id for r in console.sandbox.sandbox.requests if r.request_id]
        assert all(request_ids)
        assert set(request_ids) <= set(sent)
        assert b.text("#job-state") == "succeeded"
        events = b.texts("tr.event td:nth-child(3)")
        assert events[0] == "queued"
        assert "dispatch_completed" in events
        # The request's personal data is redacted: the recipient's address is nowhere.
        assert "ada@example.com" not in b.driver.page_source
        b.shot("04-timeline")

        b.open("/")
        b.wait(lambda d: b.text("#ended") != "none", "the overview's ended jobs")
        assert "succeeded" in b.text("#ended")
        b.shot("05-overview-after")

    await asyncio.to_thread(scenario)


async def test_a_client_token_cannot_log_in(console: ConsoleGateway, browser: Browser) -> None:
    browser.base = console.url

    def scenario() -> None:
        b = browser
        b.log_in(CLIENT, CLIENT_TOKEN)
        b.wait(lambda d: b.all("p.error"), "the refusal")
        assert "wrong password" in b.text("p.error")
        b.shot("08-client-token-refused")
        b.open("/jobs")
        assert b.driver.current_url.endswith("/login")

    await asyncio.to_thread(scenario)
    assert f"failed login as '{CLIENT}'" in console.process.log()
    assert CLIENT_TOKEN not in console.process.log()


async def test_a_post_without_the_csrf_token_is_refused(
    console: ConsoleGateway, browser: Browser
) -> None:
    browser.base = console.url
    console.sandbox.sandbox.faults.update({"fail_rate": 1.0})

    def scenario() -> tuple[int, int, int]:
        b = browser
        job_id = dispatch(console)
        b.log_in(OPERATOR, OPERATOR_PASSWORD)
        b.wait(lambda d: b.all("#outbox-depth"), "the overview after the login")
        b.open(f"/jobs/{job_id}")
        b.live()
        b.wait(lambda d: b.text("#job-state") == "failed", "the job's failure")
        cookies = b.cookies()
        with httpx.Client(base_url=console.url, cookies=cookies) as forger:
            missing = forger.post(f"/jobs/{job_id}/retry", data={}).status_code
            wrong = forger.post(f"/jobs/{job_id}/retry", data={"csrf": "x" * 44}).status_code
        with httpx.Client(base_url=console.url) as stranger:
            anonymous = stranger.post(f"/jobs/{job_id}/retry", data={}).status_code
        b.driver.refresh()
        b.wait(lambda d: b.text("#job-state") == "failed", "the job, still failed")
        return missing, wrong, anonymous

    missing, wrong, anonymous = await asyncio.to_thread(scenario)
    assert (missing, wrong, anonymous) == (403, 403, 401)
    assert "did retry" not in console.process.log()
