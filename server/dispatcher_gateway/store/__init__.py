"""Durable storage: the `Store` contract and its backends."""

from .base import Apply, Store
from .sqlite import SqliteStore

__all__ = ["Apply", "SqliteStore", "Store"]
