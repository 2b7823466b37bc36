"""The console's actions in headless chromium: a failed job retried from the failed-jobs page
(core's RetryJob) succeeds as a new linked job, and the gateway's log says which operator
retried it. (tests/e2e/test_console_gateway.py: cancel and a group's retry.)"""

from __future__ import annotations

import asyncio

from dispatcher.gateway.v1 import gateway_pb2 as pb
from tests.support.console import (
    OPERATOR,
    OPERATOR_PASSWORD,
    Browser,
    ConsoleGateway,
    dispatch,
    job_state,
)


async def test_a_failed_job_is_retried_from_the_failed_jobs_page_and_succeeds(
    console: ConsoleGateway, browser: Browser
) -> None:
    browser.base = console.url
    console.sandbox.sandbox.faults.update({"fail_rate": 1.0})  # the provider refuses: 417

    def scenario() -> tuple[str, str]:
        b = browser
        failed = dispatch(console)
        b.log_in(OPERATOR, OPERATOR_PASSWORD)
        b.wait(lambda d: b.all("#outbox-depth"), "the overview after the login")
        b.open("/failed")
        b.live()
        b.wait(lambda d: b.all(f'tr[data-job="{failed}"]'), "the failed job, live")
        assert b.all('section.group[data-code="provider_error"]')
        b.shot("06-failed-groups")

        console.sandbox.sandbox.faults.update({"fail_rate": 0.0})
        b.click(f'tr[data-job="{failed}"] button.retry-one')
        b.wait(lambda d: "/jobs/" in d.current_url and failed not in d.current_url, "new job")
        b.live()
        b.wait(lambda d: b.text("#job-state") == "succeeded", "the retried job's success")
        b.shot("07-retried-succeeded")
        retried = b.driver.current_url.rsplit("/", 1)[1]
        assert b.text("#retry-of") == failed

        b.open(f"/jobs/{failed}")
        assert b.text("#retried-by") == retried
        assert not b.all("#retry")  # retried once: the new job stands for it
        b.open("/failed")
        assert not b.all(f'tr[data-job="{failed}"]')
        return failed, retried

    failed, retried = await asyncio.to_thread(scenario)
    assert await asyncio.to_thread(job_state, console, retried) == pb.JOB_STATE_SUCCEEDED
    assert f"console: operator {OPERATOR} did retry on job {failed}" in console.process.log()
