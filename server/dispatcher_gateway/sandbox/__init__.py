"""A faithful local stand-in of the Docs-Dispatcher API: a real HTTP server, signed HTTPS
webhooks with retries, fault injection, and statistics (see DISPATCHER_API.md)."""

from .app import Sandbox, serve_sandbox
from .catalog import DEFAULT_PROVIDERS, PROVIDERS, SERVICES, TEMPLATES, Template
from .events import CALLBACK_PROVIDERS, CALLBACK_SERVICES, EVENT_SEQUENCES, EventSequence
from .records import DispatchRecord, RequestRecord, SandboxStats, WebhookRecord
from .settings import ANSWER_TIMEOUT, RETRY_SCHEDULE, Faults, SandboxSettings
from .signing import signature_headers

__all__ = [
    "ANSWER_TIMEOUT",
    "CALLBACK_PROVIDERS",
    "CALLBACK_SERVICES",
    "DEFAULT_PROVIDERS",
    "EVENT_SEQUENCES",
    "PROVIDERS",
    "RETRY_SCHEDULE",
    "SERVICES",
    "TEMPLATES",
    "DispatchRecord",
    "EventSequence",
    "Faults",
    "RequestRecord",
    "Sandbox",
    "SandboxSettings",
    "SandboxStats",
    "Template",
    "WebhookRecord",
    "serve_sandbox",
    "signature_headers",
]
