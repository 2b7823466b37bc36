"""The receiver of Dispatcher's webhooks, and their signatures."""

from .signature import (
    MAX_WEBHOOK_ID_LENGTH,
    TIMESTAMP_TOLERANCE,
    WebhookVerificationError,
    WebhookVerifier,
    sign_dispatcher,
    sign_standard,
)

__all__ = [
    "MAX_WEBHOOK_ID_LENGTH",
    "TIMESTAMP_TOLERANCE",
    "WebhookVerificationError",
    "WebhookVerifier",
    "sign_dispatcher",
    "sign_standard",
]
