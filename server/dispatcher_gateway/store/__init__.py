"""Durable storage: the backends of the `Store` contract (core/ports.py)."""

from . import codec
from .sqlite import SqliteStore

__all__ = ["SqliteStore", "codec"]
