"""Console sessions and CSRF tokens, in a signed cookie: any replica reads the cookie another
made (the key is the store's, shared), and nothing is kept server-side.

Every visitor has a session (anonymous until a login, which starts a new one: a session id known
before the login is worth nothing after it). A form carries the CSRF token of its session, an
HMAC of the session id; a POST without it, or with another session's, is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "dgw_console"
SESSION_TTL = 8 * 3600.0
"""Seconds a login lasts (a working day); then the operator logs in again."""
SID_BYTES = 16


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    operator: str
    """'' until logged in."""
    expires: float


class Sessions:
    def __init__(self, key: bytes, *, clock: Callable[[], float] = time.time) -> None:
        self._key = hashlib.sha256(b"console-session\0" + key).digest()
        self._clock = clock

    def new(self, operator: str = "") -> Session:
        return Session(secrets.token_urlsafe(SID_BYTES), operator, self._clock() + SESSION_TTL)

    def _sign(self, data: bytes) -> str:
        return _b64(hmac.digest(self._key, data, "sha256"))

    def dump(self, session: Session) -> str:
        data = json.dumps([session.sid, session.operator, session.expires]).encode()
        return _b64(data) + "." + self._sign(data)

    def load(self, cookie: str | None) -> Session | None:
        """The session a cookie holds; None for no cookie, a forged or expired one."""
        if not cookie or cookie.count(".") != 1:
            return None
        encoded, signature = cookie.split(".")
        try:
            data = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            if not hmac.compare_digest(self._sign(data), signature):
                return None
            sid, operator, expires = json.loads(data)
            session = Session(str(sid), str(operator), float(expires))
        except (ValueError, TypeError):
            return None
        return session if session.expires > self._clock() else None

    def csrf(self, session: Session) -> str:
        return self._sign(b"csrf\0" + session.sid.encode())

    def csrf_ok(self, session: Session, token: str) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf(session), token)


def _b64(raw: bytes) -> str:
    """URL-safe base64 without its padding: a cookie value that needs no quoting."""
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
