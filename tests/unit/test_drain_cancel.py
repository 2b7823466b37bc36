"""The drain's cancellation of a background task holds even when the task swallows one, as a
task inside asyncio.wait_for does (Python 3.11) when the cancellation arrives as the awaited
call completes: the store watch did, and a drain waited for it forever."""

from __future__ import annotations

import asyncio

from dispatcher_gateway.app import _cancelled


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again_until_it_ends() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while swallowed < 3:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
        await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)

    await asyncio.wait_for(_cancelled(task), 10)

    assert (swallowed, task.cancelled()) == (3, True)
