"""A faithful local stand-in of the Docs-Dispatcher API: a real HTTP server, signed HTTPS
webhooks with retries, fault injection, and statistics (the API as docs/upstream.md states it).
"""

from .app import Sandbox
from .catalog import DEFAULT_PROVIDERS, PROVIDERS, SERVICES, TEMPLATES, Template
from .events import CALLBACK_PROVIDERS, CALLBACK_SERVICES, EVENT_SEQUENCES, EventSequence
from .records import DispatchRecord, RequestRecord, SandboxStats, WebhookRecord
from .server import serve_sandbox
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
