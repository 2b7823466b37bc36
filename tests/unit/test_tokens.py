import pytest

from dispatcher_gateway.core.tokens import VERIFIED_TOKENS, CallbackTokens

KEY = b"k" * 32


def test_token_names_its_job() -> None:
    tokens = CallbackTokens(KEY)
    assert tokens.job_id(tokens.token("job_abc")) == "job_abc"


def test_token_under_another_key_is_refused() -> None:
    token = CallbackTokens(b"x" * 32).token("job_abc")
    assert CallbackTokens(KEY).job_id(token) is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        "job_abc",
        "job_abc.",
        ".mac",
        "job_abd.AAAA",
        # Found by tests/fuzz: hmac.compare_digest raised TypeError on a non-ASCII MAC, and the
        # webhook was answered 500 (with a traceback in the log) to anyone who sent one.
        "0.\x80",
        "job_abc.é" * 3,
        "\ud800.AAAA",
    ],
)
def test_malformed_or_forged_token_is_refused(token: str) -> None:
    assert CallbackTokens(KEY).job_id(token) is None


def test_tampered_job_id_is_refused() -> None:
    tokens = CallbackTokens(KEY)
    _, mac = tokens.token("job_abc").split(".")
    assert tokens.job_id(f"job_abd.{mac}") is None


def test_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        CallbackTokens(b"short")


def test_a_token_verified_before_still_names_its_job_and_a_tampered_one_is_still_refused() -> None:
    tokens = CallbackTokens(KEY)
    token = tokens.token("job_abc")
    _, mac = token.split(".")

    assert [tokens.job_id(token) for _ in range(3)] == ["job_abc"] * 3
    assert tokens.job_id(f"job_abd.{mac}") is None
    assert tokens.job_id(token + "A") is None


def test_the_remembered_tokens_are_bounded() -> None:
    tokens = CallbackTokens(KEY)
    many = [tokens.token(f"job_{n}") for n in range(VERIFIED_TOKENS + 10)]

    assert [tokens.job_id(t) for t in many] == [f"job_{n}" for n in range(len(many))]
    assert len(tokens._verified) == VERIFIED_TOKENS
    # The oldest were let go, and still verify.
    assert tokens.job_id(many[0]) == "job_0"
