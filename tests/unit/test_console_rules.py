"""The console's rules on their own: redaction, escaping, the operators file, sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher_gateway.console.markup import Markup, escape, html
from dispatcher_gateway.console.operators import Operators, hash_password
from dispatcher_gateway.console.redact import REDACTED, redact
from dispatcher_gateway.console.sessions import Session, Sessions


def test_fields_named_for_secrets_or_personal_data_are_redacted_whole() -> None:
    shown = redact(
        {
            "apiToken": "t",
            "Password": "p",
            "to": [{"email": "a@b.c"}],
            "signers": [{"firstName": "Ada"}],
            "providerName": "signaturit",
            "count": 3,
        }
    )
    assert shown == {
        "apiToken": REDACTED,
        "Password": REDACTED,
        "to": REDACTED,
        "signers": REDACTED,
        "providerName": "signaturit",
        "count": 3,
    }


def test_addresses_and_long_numbers_are_redacted_inside_any_text() -> None:
    assert redact("sent to ada@example.com, +33 6 00 00 00 00") == (
        f"sent to {REDACTED}, {REDACTED}"
    )
    assert redact("job 12 retried 3 times") == "job 12 retried 3 times"


def test_escape_leaves_markup_and_escapes_the_rest() -> None:
    assert escape('<a href="x">') == "&lt;a href=&quot;x&quot;&gt;"
    assert html("<b>{}</b>", "<i>") == "<b>&lt;i&gt;</b>"
    assert html("<b>{}</b>", Markup("<i>")) == "<b><i></b>"


def test_an_operators_password_checks_and_no_other(tmp_path: Path) -> None:
    path = tmp_path / "operators"
    path.write_text(f"ops {hash_password('right')}\n")
    operators = Operators.load(path)
    assert operators.check("ops", "right")
    assert not operators.check("ops", "wrong")
    assert not operators.check("other", "right")


@pytest.mark.parametrize(
    "text",
    ["", "ops\n", "ops sha256:abc\n", "ops scrypt:1:2\n", "bad name scrypt:1:1:1:a:b\n"],
)
def test_an_operators_file_that_does_not_parse_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "operators"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"line 1|names no operator"):
        Operators.load(path)


def test_an_operator_named_twice_refuses_the_file(tmp_path: Path) -> None:
    path = tmp_path / "operators"
    line = f"ops {hash_password('x')}\n"
    path.write_text(line + line)
    with pytest.raises(ValueError, match="named twice"):
        Operators.load(path)


def test_a_session_reads_back_until_it_expires() -> None:
    now = [1000.0]
    sessions = Sessions(b"k" * 32, clock=lambda: now[0])
    session = sessions.new("ops")
    cookie = sessions.dump(session)
    assert sessions.load(cookie) == session
    assert "=" not in cookie
    assert '"' not in cookie
    now[0] += 9 * 3600
    assert sessions.load(cookie) is None


def test_another_keys_cookie_or_an_altered_one_is_no_session() -> None:
    mine, theirs = Sessions(b"a" * 32), Sessions(b"b" * 32)
    cookie = theirs.dump(theirs.new("ops"))
    assert mine.load(cookie) is None
    data, signature = mine.dump(mine.new("ops")).split(".")
    assert mine.load(data[:-2] + "xx." + signature) is None


def test_csrf_tokens_are_per_session() -> None:
    sessions = Sessions(b"k" * 32)
    one, two = sessions.new("ops"), sessions.new("ops")
    assert sessions.csrf_ok(one, sessions.csrf(one))
    assert not sessions.csrf_ok(two, sessions.csrf(one))
    assert not sessions.csrf_ok(Session("x", "ops", 0.0), "")
