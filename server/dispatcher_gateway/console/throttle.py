"""Failed console logins, counted so that passwords cannot be guessed without end.

A guess costs the console about 50 ms of a core (scrypt, on purpose) and the guesser nothing.
Past `limit` failures within `window` seconds, a key is refused before its password is hashed,
until its oldest failure ages out. The console keeps two counts: per address and operator name
(a few typing mistakes, then a pause) and per address alone (one address guessing across
names). Never per name alone: anyone could then lock an operator out from elsewhere. Behind a
proxy every operator shares the proxy's address; the per-address limit is set high for that.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

LIMIT = 5
"""Failed logins per address and operator name within WINDOW."""
PEER_LIMIT = 30
"""Failed logins per address, whatever the names, within WINDOW."""
WINDOW = 60.0
MOST_KEYS = 10_000
"""Keys remembered at most; past it the least recently failed are forgotten (memory stays bounded
when many addresses fail once)."""


class LoginThrottle:
    def __init__(
        self,
        limit: int = LIMIT,
        window: float = WINDOW,
        *,
        most_keys: int = MOST_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.most_keys = most_keys
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, key: str) -> float:
        """Seconds before `key` may try again; 0.0 when it may now."""
        failures = self._failures.get(key)
        if failures is None:
            return 0.0
        now = self.clock()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return 0.0
        if len(failures) < self.limit:
            return 0.0
        return failures[0] + self.window - now

    def failed(self, key: str) -> None:
        failures = self._failures.pop(key, None) or deque(maxlen=self.limit)
        failures.append(self.clock())
        self._failures[key] = failures  # the most recently failed last
        while len(self._failures) > self.most_keys:
            self._failures.popitem(last=False)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)

    def forget_one(self, key: str) -> None:
        """One recorded attempt of `key` taken back (the latest)."""
        failures = self._failures.get(key)
        if failures:
            failures.pop()


class LoginGuard:
    """The two counts a login goes through: per address and name, and per address."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_name = LoginThrottle(LIMIT, clock=clock)
        self.per_peer = LoginThrottle(PEER_LIMIT, clock=clock)

    def wait(self, peer: str, name: str) -> float:
        return max(self.per_name.wait(f"{peer} {name}"), self.per_peer.wait(peer))

    def attempt(self, peer: str, name: str) -> None:
        """A login about to be checked, counted as failed until `succeeded` says otherwise:
        counted before its password is hashed, so that guesses sent at once, all waiting for
        scrypt, cannot all pass `wait` before the first of them is counted."""
        self.per_name.failed(f"{peer} {name}")
        self.per_peer.failed(peer)

    def succeeded(self, peer: str, name: str) -> None:
        """A good password clears the name's count and takes back its own attempt from the
        address's count; the address's earlier failures stay (one good login between guesses
        must not reset a guesser's budget)."""
        self.per_name.succeeded(f"{peer} {name}")
        self.per_peer.forget_one(peer)
