"""NATS names: ids as subject tokens and KV keys, and the streams, buckets and subjects of one
store under its prefix.

Client and job ids become subject tokens and KV keys through `token`, which keeps [A-Za-z0-9-]
and writes every other byte as _XX, so any id is safe and distinct ids stay distinct."""

from __future__ import annotations

import hashlib
import re
import struct
import uuid
from typing import Final

from ...core.model import Job, Priority

PREFIX_RE: Final = re.compile(r"^[A-Za-z0-9-]+$")
_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
NO_STREAM: Final = "-"
"""A stream name none of ours has (they all hold '_'): a publish that expects it is refused by
the stream that gets it, which stores nothing (open()'s probe)."""
BUCKETS: Final = ("jobs", "jobs_by_client", "idempotency", "seen", "rate", "secrets")
OUTBOX_CONSUMER: Final = "worker"
"""The durable consumer of the outbox's legacy subject (entries queued by a release before the
fair share), shared by every replica."""
LANE_CONSUMER_PREFIX: Final = "lane-"


def token(text: str) -> str:
    """`text` as one subject token / KV key part: [A-Za-z0-9-] kept, every other byte as _XX,
    '' as '_' (which no non-empty text gives)."""
    if not text:
        return "_"
    return "".join(
        char if char in _SAFE else "".join(f"_{byte:02X}" for byte in char.encode())
        for char in text
    )


def untoken(part: str) -> str:
    if part == "_":
        return ""
    raw = bytearray()
    i = 0
    while i < len(part):
        if part[i] == "_":
            raw.append(int(part[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(part[i].encode())
            i += 1
    return raw.decode()


def dedupe_msg_id(dedupe_key: str) -> str:
    return "k-" + hashlib.sha256(dedupe_key.encode()).hexdigest()


def random_msg_id() -> str:
    return "u-" + uuid.uuid4().hex


def enqueue_msg_id(job_id: str) -> str:
    return f"enqueue.{token(job_id)}"


def index_key(job: Job) -> str:
    """The job's key in the jobs_by_client bucket: <client>.<created_at>.<job>, where created_at
    is the big-endian double in hex, so keys of one client sort by creation time."""
    created = struct.pack(">d", job.created_at).hex()
    return f"{token(job.client)}.{created}.{token(job.job_id)}"


def parse_index_key(key: str) -> tuple[float, str]:
    """(created_at, job_id) from the part of an index key after the client."""
    created, job = key.split(".", 1)
    return struct.unpack(">d", bytes.fromhex(created))[0], untoken(job)


class Layout:
    """The names of one store's streams, buckets and subjects, all under `prefix`."""

    def __init__(self, prefix: str) -> None:
        if not PREFIX_RE.match(prefix):
            raise ValueError("prefix must be letters, digits and '-'")
        self.prefix = prefix

    @property
    def events_stream(self) -> str:
        return f"{self.prefix}_events"

    @property
    def outbox_stream(self) -> str:
        return f"{self.prefix}_outbox"

    def bucket(self, name: str) -> str:
        """The KV bucket's full name: jobs, jobs_by_client, idempotency, seen, rate, secrets."""
        return f"{self.prefix}_{name}"

    @property
    def events_subject(self) -> str:
        """The events stream's subjects are <this>.<client>.<job>."""
        return f"{self.prefix}.events"

    def event_subject(self, client: str, job_id: str) -> str:
        return f"{self.events_subject}.{token(client)}.{token(job_id)}"

    @property
    def outbox_subject(self) -> str:
        """The outbox's legacy subject; its lanes are <this>.<client>.<priority>."""
        return f"{self.prefix}.outbox"

    def outbox_lane(self, client: str, priority: Priority) -> str:
        """The subject of one client's outbox entries of one priority. The normal lane of the
        client named '' is the legacy subject: the lanes take its consumer ("worker") for that
        lane (lanes.py), so a lane of its own would have none."""
        if not client and priority is Priority.NORMAL:
            return self.outbox_subject
        return f"{self.outbox_subject}.{token(client)}.{priority.value}"

    def lane_of(self, subject: str) -> tuple[str, Priority] | None:
        """(client, priority) of a lane's subject; None for any other subject."""
        parts = subject.removeprefix(self.outbox_subject + ".").split(".")
        if not subject.startswith(self.outbox_subject + ".") or len(parts) != 2:
            return None
        if parts[1] not in {p.value for p in Priority}:
            return None
        return untoken(parts[0]), Priority(parts[1])


def lane_consumer(client: str, priority: Priority) -> str:
    """The durable consumer of one lane: a hash of the client, as a client's token may be longer
    than a consumer name can be."""
    digest = hashlib.sha256(client.encode()).hexdigest()[:24]
    return f"{LANE_CONSUMER_PREFIX}{digest}-{priority.value}"
