"""Durable storage: the backends of the `Store` contract (core/ports.py), and the codec they
share. MemoryStore keeps everything in memory (for tests); SqliteStore one file; NatsStore
(store.nats, imported on demand: it needs nats-py) a JetStream cluster."""

from . import codec
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = ["MemoryStore", "SqliteStore", "codec"]
