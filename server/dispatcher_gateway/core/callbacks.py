"""Which jobs end by webhook, and how long the gateway waits for one.

Dispatcher calls back for some services and providers only (esign: Universign and Signaturit;
postal: MySendingBox; see docs/upstream.md "Webhooks"). A job that will be called back is
submitted in async mode with the callback URL and ends by its terminal webhook, or as overdue
when none comes in time; every other job is submitted in sync mode, in the background, and the
upstream's answer is its end. Both lists are settings, so the day Dispatcher calls back for
another service or provider it is one change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .model import DispatchSpec, Service

DAY = 24 * 3600.0

DEFAULT_SERVICES = frozenset({Service.ESIGN, Service.POSTAL})
DEFAULT_PROVIDERS = frozenset({"universign", "signaturit", "mysendingbox"})
DEFAULT_DEADLINES: Mapping[Service, float] = {
    # A signing period is commonly 14-15 days; Dispatcher retries a webhook for 28 h more.
    Service.ESIGN: 20 * DAY,
    # A letter returned to its sender takes about two weeks to come back.
    Service.POSTAL: 20 * DAY,
}
DEFAULT_DEADLINE = 20 * DAY
"""For a service called back that has no deadline of its own."""


@dataclass(frozen=True, slots=True)
class CallbackRules:
    services: frozenset[Service] = DEFAULT_SERVICES
    """Services whose jobs Dispatcher calls back."""
    providers: frozenset[str] = DEFAULT_PROVIDERS
    """Providers that call back. A request that names another provider is submitted in sync mode;
    one that names none (the account's default provider) is taken to call back."""
    deadlines: Mapping[Service, float] = field(default_factory=lambda: dict(DEFAULT_DEADLINES))
    """Seconds after its submission a job waits for its terminal webhook, by service."""

    def calls_back(self, spec: DispatchSpec) -> bool:
        """A chain (file then esign) is called back when one of its services is."""
        if not any(s in self.services for s in spec.services):
            return False
        provider = spec.provider.lower()
        return not provider or provider in self.providers

    def deadline(self, services: tuple[Service, ...]) -> float:
        """The longest deadline of the chain's services that call back."""
        waits = [self.deadlines.get(s, DEFAULT_DEADLINE) for s in services if s in self.services]
        return max(waits, default=DEFAULT_DEADLINE)
