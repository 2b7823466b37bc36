"""The outbox entries of sync calls, dropped once their job ends: the call ends the job, and the
outbox would only lease each entry to find its job ended and ack it (a lease, a read and an ack
per sync call). The store notes each entry when its create commits, and the outbox's next lease
deletes those whose job has ended since. Only in memory: after a restart, or past WATCHED_MAX,
the outbox acks such entries as it finds them, as it always did."""

from __future__ import annotations

import sqlite3
from typing import Final

from ...core.model import JobEvent
from . import ops

WATCHED_MAX: Final = 10_000
"""Watched entries remembered, and those of ended jobs waiting for a lease to drop them: past
this, the oldest are forgotten, and the outbox drops such an entry on finding its job ended, as
after a restart."""


class WatchedEntries:
    """Touched by the writer's worker thread only."""

    def __init__(self) -> None:
        self._watched: dict[str, int] = {}
        """Job id to outbox entry id, for the entries committed whose job has not ended yet,
        oldest first."""
        self._ended: list[int] = []
        """Watched entries whose job has ended since the last lease, which drops them."""

    def committed(self, notes: list[JobEvent | ops.Watched]) -> list[JobEvent]:
        """After a commit: its notes' watched entries remembered, those whose job its events
        ended set aside for the next lease; returns the events."""
        events: list[JobEvent] = []
        for note in notes:
            if isinstance(note, ops.Watched):
                self._watched[note.job_id] = note.entry_id
                if len(self._watched) > WATCHED_MAX:
                    del self._watched[next(iter(self._watched))]
                continue
            events.append(note)
            if note.terminal and note.job_id in self._watched:
                entry_id = self._watched.pop(note.job_id)
                if len(self._ended) < WATCHED_MAX:
                    self._ended.append(entry_id)
        return events

    def drop_ended(self, conn: sqlite3.Connection) -> None:
        """Delete the watched entries whose job has ended, in the outbox's own write. Should
        that write be undone, they are left to the outbox."""
        if self._ended:
            ended, self._ended = self._ended, []
            ops.drop_from_outbox(conn, ended)
