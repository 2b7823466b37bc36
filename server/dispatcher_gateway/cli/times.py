"""Times on the command line: RFC 3339 (`2026-12-01T09:00:00Z`), or from now (`+90s`, `+15m`,
`+2h`, `+1d`; `-10m` for ten minutes ago)."""

from __future__ import annotations

import time

from google.protobuf import timestamp_pb2

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(text: str, option: str) -> timestamp_pb2.Timestamp:
    """The time `text` names; SystemExit naming `option` if it names none."""
    stamp = timestamp_pb2.Timestamp()
    if text[:1] in "+-":
        number, unit = text[1:-1], text[-1:]
        try:
            seconds = float(number) * UNITS[unit]
        except (KeyError, ValueError):
            raise SystemExit(
                f"{option}: a time from now is +N or -N with s, m, h or d, got {text!r}"
            ) from None
        stamp.FromNanoseconds(
            round((time.time() + (seconds if text[0] == "+" else -seconds)) * 1e9)
        )
        return stamp
    try:
        stamp.FromJsonString(text)
    except ValueError:
        raise SystemExit(
            f"{option}: an RFC 3339 time such as 2026-12-01T09:00:00Z, or +15m, got {text!r}"
        ) from None
    return stamp
