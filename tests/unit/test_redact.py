"""Passwords never leave the process: URL, keyword and registered-secret masking."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import propagator.core.redact as redact_module
from propagator.core.redact import mask_url, redact, register_secret, secrets_of_url


@contextmanager
def isolated_secrets() -> Iterator[None]:
    """Register secrets for one check only, so no test masks another test's text."""
    saved = redact_module._secrets
    redact_module._secrets = set()
    try:
        yield
    finally:
        redact_module._secrets = saved


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    with isolated_secrets():
        yield


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "postgresql://app:s3cret@db.example:5432/jobs",
            "postgresql://app:***@db.example:5432/jobs",
        ),
        (
            "postgres://app:s3cret@db/jobs?sslmode=require&application_name=propagator",
            "postgres://app:***@db/jobs?sslmode=require&application_name=propagator",
        ),
        ("postgresql://app:p%40ss%3Aw%2Fd@db/jobs", "postgresql://app:***@db/jobs"),
        ("postgresql://app:p@ss@db/jobs", "postgresql://app:***@db/jobs"),
        ("postgresql://:only@db/jobs", "postgresql://:***@db/jobs"),
        (
            "postgresql://db/jobs?user=app&password=s3cret&sslmode=verify-full",
            "postgresql://db/jobs?user=app&password=***&sslmode=verify-full",
        ),
        ("postgresql://db/jobs?PASSWORD=s3cret", "postgresql://db/jobs?PASSWORD=***"),
        ("postgresql://app@db/jobs", "postgresql://app@db/jobs"),
        ("postgresql+psycopg://app:pw@db/jobs", "postgresql+psycopg://app:***@db/jobs"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    """The password goes; scheme, user, host, port, database and options stay."""
    assert mask_url(url) == masked


def test_mask_url_inside_text_masks_every_url() -> None:
    """Several URLs in one message are each masked, and the text between them kept."""
    text = "copy postgres://a:one@h1/db to postgresql://b:two@h2:6543/db failed"
    assert mask_url(text) == "copy postgres://a:***@h1/db to postgresql://b:***@h2:6543/db failed"


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("host=db password=s3cret user=app", "host=db password=*** user=app"),
        ("host=db password = s3cret", "host=db password = ***"),
        ("host=db password='s 3 c\\'ret' user=app", "host=db password=*** user=app"),
        ("PASSWORD=s3cret", "PASSWORD=***"),
        (
            "connect to postgresql://db/j?password=s3cret&sslmode=require failed",
            "connect to postgresql://db/j?password=***&sslmode=require failed",
        ),
        (
            "connect to postgresql://db/j?password=s3cret failed",
            "connect to postgresql://db/j?password=*** failed",
        ),
    ],
)
def test_redact_keyword_and_query_forms(text: str, redacted: str) -> None:
    """libpq keyword passwords and URL query passwords are masked, options kept."""
    assert redact(text) == redacted


def test_redact_removes_registered_secrets_anywhere() -> None:
    """A registered secret is removed wherever it appears, not only in URL shapes."""
    register_secret("tok-3f9a1c")
    assert redact("auth failed for token tok-3f9a1c!") == "auth failed for token ***!"
    assert redact('{"token":"tok-3f9a1c"}') == '{"token":"***"}'
    assert redact("xtok-3f9a1cx") == "x***x"


def test_registered_percent_encoded_secret_is_removed_in_both_forms() -> None:
    """A secret registered percent-encoded is also removed in its decoded form."""
    register_secret("p%40ss%2Fword")
    assert redact("libpq said p@ss/word is wrong") == "libpq said *** is wrong"
    assert redact("url had p%40ss%2Fword") == "url had ***"


def test_longer_secrets_are_removed_before_their_prefixes() -> None:
    """Overlapping secrets leave no fragment of the longer one behind."""
    register_secret("abcdef")
    register_secret("abcdefghij")
    assert redact("x abcdefghij y") == "x *** y"


def test_very_short_secrets_are_not_registered() -> None:
    """One- and two-character secrets would mask ordinary text, so they are ignored."""
    register_secret("ab")
    register_secret("")
    register_secret(None)
    assert redact("a cab ran") == "a cab ran"


def test_secrets_of_url() -> None:
    """Passwords are found in the userinfo and in a password= query option."""
    assert secrets_of_url("postgresql://u:pw1@h/db?password=pw2") == ["pw1", "pw2"]
    assert secrets_of_url("postgresql://u@h/db") == []


passwords = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=6
)


@given(passwords, st.sampled_from(["postgresql", "postgres"]))
def test_percent_encoded_url_password_never_survives_masking(password: str, scheme: str) -> None:
    """For any password, written percent-encoded in a URL, the mask leaves neither form."""
    encoded = quote(password, safe="")
    url = f"{scheme}://app_user:{encoded}@db.internal:5432/jobs?sslmode=require"
    rest = f"{scheme}://app_user:@db.internal:5432/jobs?sslmode=require"  # all but the password
    assume(password not in rest and encoded not in rest)
    masked = mask_url(url)
    assert encoded not in masked
    assert password not in masked
    parts = urlsplit(masked)
    assert (parts.username, parts.hostname, parts.port) == ("app_user", "db.internal", 5432)
    assert parts.query == "sslmode=require"


@given(passwords)
def test_raw_url_password_never_survives(password: str) -> None:
    """A password written unencoded in a URL is masked, and also removed once registered."""
    # Characters that end the authority, or that urlsplit refuses there, need percent-encoding.
    assume(not set(password) & set("/?#[]"))
    url = f"postgresql://app:{password}@db/jobs"
    assume(password not in "postgresql://app:@db/jobs")
    assert mask_url(url) == "postgresql://app:***@db/jobs"
    with isolated_secrets():
        for secret in secrets_of_url(url):
            register_secret(secret)
        assert password not in redact(f"could not connect: {url}")


@given(passwords, st.text(), st.text())
def test_registered_secret_never_survives_in_any_text(secret: str, before: str, after: str) -> None:
    """A registered secret is gone from any text it is embedded in."""
    assume("*" not in secret)  # the mask itself could otherwise rebuild the secret
    with isolated_secrets():
        register_secret(secret)
        assert secret not in redact(before + secret + after)
