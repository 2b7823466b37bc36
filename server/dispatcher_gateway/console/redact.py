"""What the console shows of a payload (a job's request, an event's data, an error's details):
the fields that can hold personal data or a secret are redacted.

The rule, as the README states it:
- a field whose name, lower-cased and without '_' and '-', contains one of SECRET_WORDS or
  PERSONAL_WORDS, or is one of PERSONAL_NAMES, shows `[redacted]` whatever its value (an object
  or a list included);
- any other string shows with every e-mail address and every run of 8 or more digits (phone,
  IBAN, card numbers) replaced by `[redacted]`;
- numbers, booleans, null and the field names themselves show as they are.
Nothing here decides what is stored or sent: only what a page shows.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[redacted]"
SECRET_WORDS = ("password", "secret", "token", "apikey", "authorization", "credential", "cookie")
PERSONAL_WORDS = (
    "email",
    "phone",
    "mobile",
    "address",
    "iban",
    "birth",
    "signature",
    "base64",
    "content",
    "firstname",
    "lastname",
    "fullname",
    "recipient",
    "signer",
)
PERSONAL_NAMES = frozenset(
    {"name", "to", "cc", "bcc", "from", "replyto", "body", "html", "text", "subject", "city"}
)
_EMAIL = re.compile(r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)+")
_DIGITS = re.compile(r"\+?\d[\d .-]{6,}\d")


def sensitive(name: str) -> bool:
    key = name.lower().replace("_", "").replace("-", "")
    return (
        key in PERSONAL_NAMES
        or any(word in key for word in SECRET_WORDS)
        or any(word in key for word in PERSONAL_WORDS)
    )


def redact_text(text: str) -> str:
    text = _EMAIL.sub(REDACTED, text)
    return _DIGITS.sub(lambda m: REDACTED if _digit_count(m.group()) >= 8 else m.group(), text)


def _digit_count(text: str) -> int:
    return sum(c.isdigit() for c in text)


def redact(value: Any) -> Any:
    """A copy of a JSON value with the rule above applied."""
    if isinstance(value, dict):
        return {str(k): REDACTED if sensitive(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
