"""HTML built from strings, escaped by default: a value becomes markup only by passing through
`escape` (or `html`, which escapes every value it is given). Nothing a client sent, nor anything
the upstream answered, reaches a page unescaped."""

from __future__ import annotations

import html as _html
from collections.abc import Iterable


class Markup(str):
    """Text that is already HTML: `html` and `join` leave it as it is."""

    __slots__ = ()


def escape(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(_html.escape("" if value is None else str(value), quote=True))


def html(template: str, *values: object, **named: object) -> Markup:
    """`template` (written here, trusted) with `{}` fields filled by escaped values."""
    return Markup(template.format(*map(escape, values), **{k: escape(v) for k, v in named.items()}))


def join(parts: Iterable[object], separator: str = "") -> Markup:
    return Markup(separator.join(escape(p) for p in parts))
