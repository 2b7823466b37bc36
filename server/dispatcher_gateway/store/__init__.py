"""Durable storage: the `Store` contract and its backends."""

from .base import Apply, Clock, Store
from .sqlite import SqliteStore

__all__ = ["Apply", "Clock", "SqliteStore", "Store"]
