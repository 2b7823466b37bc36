"""The receiver of Dispatcher's webhooks, and their signatures."""

from .app import (
    DEFAULT_MAX_BODY,
    MAX_IN_FLIGHT,
    STORE_RETRY_AFTER,
    WEBHOOK_PATH,
    MalformedWebhook,
    PayloadTooLarge,
    UnsupportedMediaType,
    create_webhook_app,
)
from .signature import (
    MAX_WEBHOOK_ID_LENGTH,
    TIMESTAMP_TOLERANCE,
    VerifiedWebhook,
    WebhookVerificationError,
    WebhookVerifier,
    sign_dispatcher,
    sign_standard,
)

__all__ = [
    "DEFAULT_MAX_BODY",
    "MAX_IN_FLIGHT",
    "MAX_WEBHOOK_ID_LENGTH",
    "STORE_RETRY_AFTER",
    "TIMESTAMP_TOLERANCE",
    "WEBHOOK_PATH",
    "MalformedWebhook",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "VerifiedWebhook",
    "WebhookVerificationError",
    "WebhookVerifier",
    "create_webhook_app",
    "sign_dispatcher",
    "sign_standard",
]
