"""The NATS JetStream store backend, one noun a module: `store` (the `Store` contract),
`commit` (the envelope commit protocol), `tail`, `jetstream` (the one way to talk to NATS),
`names` (ids as subjects and keys; the layout), `provision` (what open() creates). Jobs and
events are written as the shared `store.codec` gives them."""

from .store import CLAIMER_GRACE, DEFAULT_PREFIX, DEFAULT_TIMEOUT, NatsStore

__all__ = ["CLAIMER_GRACE", "DEFAULT_PREFIX", "DEFAULT_TIMEOUT", "NatsStore"]
