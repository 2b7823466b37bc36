"""B3 past the knee: webhooks offered faster than one replica records them, over more
connections than it takes at once. What a sender sees: how many were accepted, and how soon
each got its answer, accepted or refused (503 with Retry-After)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .messages import callback_path, signed_webhook
from .rawhttp import RawConnection


def offered_webhooks(
    port: int, job_ids: list[str], rate: float, seconds: float, connections: int
) -> dict[str, Any]:
    return asyncio.run(_offered_webhooks(port, job_ids, rate, seconds, connections))


async def _offered_webhooks(
    port: int, job_ids: list[str], rate: float, seconds: float, connections: int
) -> dict[str, Any]:
    """Paced sends on `connections` keep-alive connections, each one request at a time; a send
    whose turn comes while every connection is busy waits for one, and that wait counts in its
    answer time (a real sender's queue). `late`: how long after its turn each was written, the
    sender's own lag included."""
    paths = [callback_path(job_id) for job_id in job_ids]
    pool: asyncio.Queue[RawConnection] = asyncio.Queue()
    for _ in range(connections):
        conn = RawConnection("127.0.0.1", port)
        await conn.open()
        pool.put_nowait(conn)
    answers: dict[int, list[float]] = {}
    late: list[float] = []
    refusals_without_retry_after = 0
    total = int(rate * seconds)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def send(seq: int) -> None:
        nonlocal refusals_without_retry_after
        due = start + seq / rate
        conn = await pool.get()
        late.append(loop.time() - due)
        try:
            body, headers = signed_webhook(seq)
            status, head = await conn.post_head(paths[seq % len(paths)], body, headers)
            answers.setdefault(status, []).append(loop.time() - due)
            if status == 503 and b"retry-after:" not in head.lower():
                refusals_without_retry_after += 1
        finally:
            pool.put_nowait(conn)

    tasks = []
    began = time.monotonic()
    for seq in range(total):
        delay = start + seq / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(seq)))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - began
    while not pool.empty():
        await pool.get_nowait().close()
    return {
        "sent": total,
        "seconds": elapsed,
        "answers": answers,
        "late": late,
        "refusals_without_retry_after": refusals_without_retry_after,
    }
