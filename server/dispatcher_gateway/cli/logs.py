"""Log lines of the long-running commands (serve, sandbox): to standard error, one per line."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per HTTP request is the upstream client's job, at DEBUG; httpx's own is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # uvicorn announces each of its servers starting and stopping; the gateway says it once.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
