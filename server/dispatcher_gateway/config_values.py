"""How setting values are written: addresses, durations, lists of services and names, flags.
Each parser raises ValueError with a message fit for a config error line."""

from __future__ import annotations

import ipaddress

from .core.model import Service


def split_addr(addr: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' → (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {addr!r}")
    host = host.strip("[]")
    if not host:
        raise ValueError(f"expected HOST:PORT, got {addr!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '12h' or '20d': positive seconds."""
    text = text.strip().lower()
    factor = _UNITS.get(text[-1:], 0.0)
    number = text[:-1] if factor else text
    factor = factor or 1.0
    try:
        value = float(number) * factor
    except ValueError:
        raise ValueError(f"expected a duration such as 20d, 12h or 90s, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"must be a positive duration, got {text!r}")
    return value


def services(text: str) -> frozenset[Service]:
    wanted = [n.strip().lower() for n in text.split(",") if n.strip()]
    known = {s.value for s in Service}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown service {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return frozenset(Service(n) for n in wanted)


def names(text: str) -> frozenset[str]:
    return frozenset(n.strip().lower() for n in text.split(",") if n.strip())


def deadlines(text: str) -> dict[Service, float]:
    """'esign=20d,postal=20d'."""
    found: dict[Service, float] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, sep, duration = item.partition("=")
        if not sep:
            raise ValueError(f"expected SERVICE=DURATION such as esign=20d, got {item!r}")
        [service] = services(name)
        found[service] = parse_duration(duration)
    return found


FLAGS = {
    **dict.fromkeys(("true", "1", "yes", "on"), True),
    **dict.fromkeys(("false", "0", "no", "off"), False),
}


def replicas(text: str) -> int:
    if text not in ("1", "3"):
        raise ValueError(f"1 or 3, got {text!r}")
    return int(text)
