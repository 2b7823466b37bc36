"""The one way the store talks to NATS: a connection, and the JetStream requests the store
makes on it, KV reads and writes included (a KV bucket is a stream; its key is a subject).

Data requests are made on the wire, without nats-py's JetStream and KV layers: one JSON decode
per answer, no header parsing, no dataclasses, on the hot path of every write. Creating streams,
buckets and consumers goes through nats-py's JetStream management API.

Reads (`read`) use ephemeral pull consumers with ack none, and are read-your-writes: they first
ask the stream's leader for the sequence of its last message on their subject, then pull
(no_wait) until their consumer has delivered it, and delete the consumer. The consumer sits on
any replica of the stream, and one that lags behind the leader would otherwise end the read
short, losing events for its reader. A pull that nobody answers (a consumer whose leader is
moving, or so new that its interest has not reached this client's server) is made again until
`timeout`.

The connection reconnects forever; while it is down, nothing is buffered (pending_size=0) and
every call raises StoreUnavailable at once or within `timeout`, so nothing a caller was told
failed is written later behind its back."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import logging
import random
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from ...core.errors import StoreUnavailable

log = logging.getLogger(__name__)

RECONNECT_WAIT: Final = 0.5
READ_BATCH: Final = 256
EPHEMERAL_IDLE: Final = 60.0
"""A read consumer left behind by a dead process is removed by the server after this."""
LEADER_POLL: Final = 0.05
CATCH_UP_POLL: Final = 0.01
"""Seconds between pulls of a read whose replica has not yet stored what the leader holds."""
PUBLISH_JITTER: Final = 0.005
"""At most this many seconds between two tries of a publish a clustered stream is still storing."""
DUPLICATE_IN_PROCESS: Final = 10158
"""JetStream's error code when a clustered stream is still storing another publish with the
same Nats-Msg-Id (two replicas flushing the same pending event at once)."""
WRONG_LAST_SEQUENCE: Final = (10071, 10164)
"""JetStream's error codes for a compare-and-set that found another revision."""
API_PREFIX: Final = "$JS.API"
MSG_ID_HEADER: Final = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ_HEADER: Final = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_STREAM_HEADER: Final = "Nats-Expected-Stream"
KV_OPERATION_HEADER: Final = b"KV-Operation:"
STATUS_HEADER: Final = "Status"
HEARTBEAT_STATUS: Final = "100"
NO_RESPONDERS_STATUS: Final = "503"

UNREACHABLE: Final = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    asyncio.TimeoutError,
    OSError,
)
"""Errors that mean NATS cannot be reached or did not answer in time, as opposed to a bug."""


class KeyExists(Exception):
    """A compare-and-set found another revision of the key (or, for a create, any)."""


@contextlib.contextmanager
def unavailable() -> Iterator[None]:
    """NATS's errors for an unreachable or failing server as StoreUnavailable."""
    try:
        yield
    except nats.js.errors.APIError as exc:
        # nats-py's KV errors are APIErrors that never set `code`.
        code = getattr(exc, "code", None)
        if code is not None and code >= 500:
            raise StoreUnavailable(f"NATS JetStream: {exc.description}") from exc
        raise
    except UNREACHABLE as exc:
        raise StoreUnavailable(f"NATS JetStream unreachable: {type(exc).__name__}") from exc


@dataclass(frozen=True, slots=True)
class Entry:
    """A KV entry as the store reads it."""

    value: bytes
    revision: int


def status(msg: Msg) -> str | None:
    """The status of a message the server sent about a pull request (None: a stream message)."""
    headers = msg.headers
    if not headers:
        return None
    found = headers.get(STATUS_HEADER)
    return str(found) if found else None


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class JetStream:
    """A connection to NATS and the JetStream requests made on it. Every call raises
    StoreUnavailable once the connection is closed."""

    def __init__(self, nc: Client, timeout: float) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=timeout)
        self._timeout = timeout

    @classmethod
    async def connect(
        cls,
        servers: list[str],
        *,
        connect_timeout: float,
        timeout: float,
        ca_file: str | None = None,
        token: str | None = None,
    ) -> JetStream:
        nc = await nats.connect(
            servers=servers,
            name="dispatcher-gateway",
            connect_timeout=connect_timeout,
            allow_reconnect=True,
            # -1 would retry the first connect forever too: open() must fail instead.
            max_reconnect_attempts=1,
            reconnect_time_wait=RECONNECT_WAIT,
            pending_size=0,
            tls=ssl.create_default_context(cafile=ca_file) if ca_file else None,
            token=token,
            error_cb=_log_error,
            disconnected_cb=_log_disconnected,
            reconnected_cb=_log_reconnected,
        )
        # Once connected, reconnect forever: the gateway recovers when NATS comes back.
        nc.options["max_reconnect_attempts"] = -1
        return cls(nc, timeout)

    async def close(self) -> None:
        """Close the connection, also while it reconnects: nothing is left open, and no
        reconnect is tried after."""
        nc = self._nc
        if nc.is_closed:
            return
        try:
            await nc.close()
        except OSError as exc:
            # A protocol line queued while connected but not yet written when the connection
            # dropped: close() writes it to the socket the reconnect loop closed, and fails there.
            # That socket is closed already and the client is marked closed: nothing is left.
            log.warning("NATS: close: %s: %s", type(exc).__name__, exc)

    @property
    def is_connected(self) -> bool:
        return self._nc.is_connected

    @property
    def reconnects(self) -> int:
        """How many times the connection was made again: a change means that what the server
        held for this client's subscriptions may be gone."""
        return int(self._nc.stats["reconnects"])

    def _client(self) -> Client:
        if self._nc.is_closed:
            raise StoreUnavailable("the NATS store is not open")
        return self._nc

    # Management, through nats-py's JetStream API

    async def account_info(self) -> None:
        self._client()
        await self._js.account_info()

    async def ensure_stream(self, config: api.StreamConfig) -> None:
        """Create the stream unless it exists (an existing one is left as it is)."""
        self._client()
        assert config.name is not None
        try:
            await self._js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            await self._js.add_stream(config)

    async def ensure_bucket(self, config: api.KeyValueConfig) -> None:
        """Create the KV bucket unless it exists (an existing one is left as it is)."""
        self._client()
        try:
            await self._js.stream_info(f"KV_{config.bucket}")
        except nats.js.errors.NotFoundError:
            await self._js.create_key_value(config)

    async def add_consumer(self, stream: str, config: api.ConsumerConfig) -> str:
        self._client()
        info = await self._js.add_consumer(stream, config)
        assert info.name is not None
        return info.name

    async def delete_consumer(self, stream: str, name: str) -> None:
        """Delete the consumer if NATS answers; one left behind is removed after EPHEMERAL_IDLE."""
        if self._nc.is_closed:
            return
        with contextlib.suppress(*UNREACHABLE, nats.js.errors.Error):
            await self._js.delete_consumer(stream, name)

    async def consumer_has_leader(self, stream: str, name: str) -> bool:
        self._client()
        info = await self._js.consumer_info(stream, name)
        return info.cluster is None or bool(info.cluster.leader)

    async def last_seq(self, stream: str) -> int:
        """The stream's last sequence, 0 when it is empty."""
        self._client()
        info = await self._js.stream_info(stream)
        return info.state.last_seq

    # Data, on the wire

    async def request(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        msg = await self._client().request(subject, payload, timeout=self._timeout, headers=headers)
        answer: dict[str, Any] = json.loads(msg.data)
        error = answer.get("error")
        if error is not None:
            nats.js.errors.APIError.from_error(error)  # raises
        return answer

    async def msg_get(self, stream: str, subject: str) -> tuple[bytes, int, bytes] | None:
        """The last message on `subject` (wildcards allowed): (data, sequence, raw headers), None
        if there is none. Answered by the stream's leader, so it counts every acknowledged write."""
        try:
            answer = await self.request(
                f"{API_PREFIX}.STREAM.MSG.GET.{stream}", dumps({"last_by_subj": subject})
            )
        except nats.js.errors.NotFoundError:
            return None
        message = answer["message"]
        data = base64.b64decode(message.get("data") or b"")
        headers = base64.b64decode(message.get("hdrs") or b"")
        return data, int(message["seq"]), headers

    async def first_seq_since(self, stream: str, when: float) -> int | None:
        """The sequence of the stream's first message stored at or after `when` (seconds since
        the epoch, by the server's clock), None if there is none."""
        start = datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat()
        try:
            answer = await self.request(
                f"{API_PREFIX}.STREAM.MSG.GET.{stream}", dumps({"start_time": start})
            )
        except nats.js.errors.NotFoundError:
            return None
        return int(answer["message"]["seq"])

    async def last_seq_on(self, stream: str, subject: str) -> int:
        """The sequence of the stream's last message on `subject`, 0 when there is none."""
        found = await self.msg_get(stream, subject)
        return 0 if found is None else found[1]

    async def last_msg_id_seq(self, stream: str, subject: str, msg_id: str) -> int | None:
        """The sequence of the last message on `subject` if its message id is `msg_id`."""
        found = await self.msg_get(stream, subject)
        if found is None:
            return None
        _, seq, headers = found
        return seq if f"{MSG_ID_HEADER}: {msg_id}\r\n".encode() in headers else None

    async def kv_get(self, bucket: str, key: str) -> Entry | None:
        found = await self.msg_get(f"KV_{bucket}", f"$KV.{bucket}.{key}")
        if found is None:
            return None
        data, seq, headers = found
        if KV_OPERATION_HEADER in headers:  # a delete or purge marker
            return None
        return Entry(data, seq)

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        """Write `value` whatever the key holds; returns the new revision."""
        return int((await self.request(f"$KV.{bucket}.{key}", value))["seq"])

    async def kv_write(self, bucket: str, key: str, value: bytes, *, last: int) -> int:
        """Compare-and-set: write `value` if the key's revision is `last` (0: if it has none).
        Raises KeyExists otherwise. Returns the new revision."""
        try:
            answer = await self.request(
                f"$KV.{bucket}.{key}", value, {EXPECTED_LAST_SUBJECT_SEQ_HEADER: str(last)}
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                raise KeyExists(exc.description) from None
            raise
        return int(answer["seq"])

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> int:
        """Publish with a message id; returns its sequence (the first one's, for a duplicate).
        While another writer's publish of the same id is being stored, a clustered stream answers
        "in process" rather than "duplicate": ask again until it gives that first publish's
        sequence."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                answer = await self.request(subject, payload, {MSG_ID_HEADER: msg_id})
                return int(answer["seq"])
            except nats.js.errors.APIError as exc:
                if exc.err_code != DUPLICATE_IN_PROCESS:
                    raise
                if time.monotonic() > deadline:
                    raise StoreUnavailable("a publish of the same event did not complete") from exc
            await asyncio.sleep(random.uniform(0, PUBLISH_JITTER))

    async def ack(self, reply: str) -> None:
        await self._client().request(reply, b"+ACK", timeout=self._timeout)

    async def nak(self, reply: str, delay: float) -> None:
        payload = b"-NAK"
        if delay > 0:
            payload += b" " + dumps({"delay": int(delay * 1e9)})
        # A request, not a publish: the server answers once the nak took effect.
        await self._client().request(reply, payload, timeout=self._timeout)

    # Pull consumers

    async def subscribe(self) -> Subscription:
        """A subscription to a new inbox, for the answers to pull requests. Refused while the
        connection is down: nats-py would keep the SUB line for the dead socket, and its close()
        would fail writing it there."""
        nc = self._client()
        if not nc.is_connected:
            raise nats.errors.ConnectionReconnectingError
        return await nc.subscribe(nc.new_inbox())

    async def unsubscribe(self, sub: Subscription) -> None:
        """Unsubscribe if the connection is open; a closed one has dropped every subscription."""
        if self._nc.is_closed:
            return
        with contextlib.suppress(*UNREACHABLE, nats.errors.BadSubscriptionError):
            await sub.unsubscribe()

    async def request_next(
        self, stream: str, consumer: str, request: dict[str, Any], reply: str
    ) -> None:
        """Ask the consumer for messages, delivered to `reply`."""
        await self._client().publish(
            f"{API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{consumer}", dumps(request), reply=reply
        )

    async def pull(
        self, stream: str, consumer: str, request: dict[str, Any], batch: int
    ) -> list[Msg]:
        """One pull request answered at once (no_wait): the messages there are, up to `batch`.
        While the consumer has no leader (it is moving to another node), or its leader's interest
        has not yet reached this client's server (a new consumer), nobody answers: the request is
        made again until `timeout`, then the store is unavailable."""
        deadline = time.monotonic() + self._timeout
        sub = await self.subscribe()
        try:
            while True:
                msgs = await self._pull_once(sub, stream, consumer, request, batch)
                if msgs is not None:
                    return msgs
                if time.monotonic() > deadline:
                    raise nats.errors.NoRespondersError
                await asyncio.sleep(LEADER_POLL)
        finally:
            await sub.unsubscribe()

    async def _pull_once(
        self, sub: Subscription, stream: str, consumer: str, request: dict[str, Any], batch: int
    ) -> list[Msg] | None:
        """The messages one pull request gets; None when nobody answered it."""
        await self.request_next(stream, consumer, request, sub.subject)
        msgs: list[Msg] = []
        while len(msgs) < batch:
            msg = await sub.next_msg(timeout=self._timeout)
            found = status(msg)
            if found == HEARTBEAT_STATUS:
                continue
            if found == NO_RESPONDERS_STATUS:
                return None
            if found is not None:
                break
            msgs.append(msg)
        return msgs

    async def read(
        self,
        stream: str,
        *,
        filter_subject: str,
        deliver_policy: api.DeliverPolicy,
        opt_start_seq: int = 0,
        headers_only: bool | None = None,
        limit: int | None = None,
    ) -> list[Msg]:
        """What an ephemeral consumer sees, up to `limit` messages: at least every message on
        `filter_subject` that the stream's leader holds when the read starts (see the module
        doc)."""
        last = await self.last_seq_on(stream, filter_subject)
        if last < opt_start_seq or last == 0:
            return []
        name = await self.add_consumer(
            stream,
            api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                deliver_policy=deliver_policy,
                opt_start_seq=opt_start_seq or None,
                filter_subject=filter_subject,
                headers_only=headers_only,
                mem_storage=True,
                num_replicas=1,
                inactive_threshold=EPHEMERAL_IDLE,
            ),
        )
        try:
            msgs: list[Msg] = []
            deadline = time.monotonic() + self._timeout
            while limit is None or len(msgs) < limit:
                if msgs and msgs[-1].metadata.sequence.stream >= last:
                    break
                want = READ_BATCH if limit is None else min(READ_BATCH, limit - len(msgs))
                got = await self.pull(stream, name, {"batch": want, "no_wait": True}, want)
                if not got:
                    if time.monotonic() > deadline:
                        raise StoreUnavailable(f"a replica of {stream} did not catch up")
                    await asyncio.sleep(CATCH_UP_POLL)
                msgs.extend(got)
            return msgs
        finally:
            with contextlib.suppress(*UNREACHABLE, nats.js.errors.NotFoundError):
                await self._js.delete_consumer(stream, name)


async def _log_error(exc: Exception) -> None:
    log.warning("NATS: %s: %s", type(exc).__name__, exc)


async def _log_disconnected() -> None:
    log.warning("NATS: disconnected; reconnecting")


async def _log_reconnected() -> None:
    log.info("NATS: reconnected")
