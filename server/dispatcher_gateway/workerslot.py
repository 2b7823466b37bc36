"""WorkerSlot: what a worker process of a gateway (GATEWAY_WORKERS) is handed by its parent."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerSlot:
    """This process is worker `index` of `count` of one gateway (GATEWAY_WORKERS, run by
    cli/workers.py): it serves the listeners beside the others, which share its store."""

    group: str
    """A name the workers of one gateway share (their SQLite neighbours' names)."""
    index: int
    count: int
    admin: socket.socket
    """Listening on loopback, bound by the parent: its /readyz and /metrics are the parent's
    to aggregate."""
    webhook: socket.socket | None = None
    """The webhook listener, bound by the parent and shared; None: this worker binds it with
    SO_REUSEPORT (as it does gRPC's)."""
    http: socket.socket | None = None
    """The JSON face's, likewise."""
