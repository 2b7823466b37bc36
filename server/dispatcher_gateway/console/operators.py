"""The operators file: who may log in to the console. Not the clients file: a client's token
is no operator's password, and an operator is no client.

One line per operator (`#` starts a comment):

    NAME scrypt:N:r:p:SALT:HASH

SALT and HASH in URL-safe base64: hashlib.scrypt of the password. The file never holds a
password: `python -m dispatcher_gateway.console NAME` reads one (twice, not echoed) and
prints the line. A name twice, or a line that does not parse, refuses the file as a whole. It is
read at start-up (mount it from a Secret; a change takes a restart).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

SCRYPT = "scrypt"
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_PASSWORD = 1024
"""Characters: a longer one is refused before it is hashed (scrypt's cost grows with it)."""
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=HASH_BYTES
    )
    return f"{SCRYPT}:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}:{_b64(salt)}:{_b64(digest)}"


@dataclass(frozen=True, slots=True)
class _Hash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> _Hash:
        kind, n, r, p, salt, digest = text.split(":")
        if kind != SCRYPT:
            raise ValueError(f"unknown hash {kind!r} (expected {SCRYPT})")
        return cls(int(n), int(r), int(p), _unb64(salt), _unb64(digest))

    def matches(self, password: str) -> bool:
        found = hashlib.scrypt(
            password.encode(),
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            dklen=len(self.digest),
            maxmem=2 * 128 * self.r * (self.n + self.p + 2),
        )
        return hmac.compare_digest(found, self.digest)


_DECOY = _Hash.parse(hash_password(secrets.token_urlsafe(16)))
"""Checked for an unknown name, so that a login takes as long whether the name exists or not."""


class Operators:
    def __init__(self, hashes: dict[str, _Hash]) -> None:
        self._hashes = hashes

    @classmethod
    def load(cls, path: str | Path) -> Operators:
        hashes: dict[str, _Hash] = {}
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                name, hashed = text.split()
                if not NAME.fullmatch(name):
                    raise ValueError(f"{name!r} is not an operator name")
                if name in hashes:
                    raise ValueError(f"operator {name!r} named twice")
                hashes[name] = _Hash.parse(hashed)
            except ValueError as exc:
                raise ValueError(f"line {number}: {exc}") from None
        if not hashes:
            raise ValueError("names no operator")
        return cls(hashes)

    def check(self, name: str, password: str) -> bool:
        """Whether `password` is `name`'s. Slow on purpose (scrypt): call it off the loop."""
        if len(password) > MAX_PASSWORD:
            return False
        known = self._hashes.get(name)
        matched = (known or _DECOY).matches(password)
        return known is not None and matched
