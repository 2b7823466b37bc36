"""The operators' console: a web page served by the gateway on its own port (settings
GATEWAY_CONSOLE_*), showing what happened to a job and the queue's health, live, with the
client API's retry and cancel for operators. Server-rendered HTML, a little JavaScript shipped
in static/, nothing fetched from elsewhere."""

from .actions import CoreActions, JobActions
from .app import Console, ConsoleSources
from .live import LiveFeed
from .operators import Operators
from .sessions import Sessions

__all__ = [
    "Console",
    "ConsoleSources",
    "CoreActions",
    "JobActions",
    "LiveFeed",
    "Operators",
    "Sessions",
]
