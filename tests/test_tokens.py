from __future__ import annotations

import pytest

from proxy.tokens import is_personal_access_token, jwt_claims, jwt_expiry
from tests.support.jwt import make_jwt


def test_a_jwt_is_a_personal_access_token() -> None:
    token = make_jwt({"token_type": "refresh", "exp": 4_000_000_000, "user_id": 1})
    assert is_personal_access_token(token)
    assert jwt_claims(token) == {"token_type": "refresh", "exp": 4_000_000_000, "user_id": 1}
    assert jwt_expiry(token) == 4_000_000_000.0


@pytest.mark.parametrize(
    "key",
    [
        "0123456789abcdef0123456789abcdef01234567",  # a legacy token: 40 hex characters
        "a.b.c",  # dots but not base64 JSON
        "eyJhbGciOiJIUzI1NiJ9..sig",  # empty payload
        "bm90IGpzb24.bm90IGpzb24.sig",  # base64 of "not json"
        "W10.W10.sig",  # JSON arrays, not objects
        "e30.e30.sig",  # {} header without alg
        "",
    ],
)
def test_anything_else_is_a_legacy_token(key: str) -> None:
    assert not is_personal_access_token(key)
    assert jwt_expiry(key) is None


def test_expiry_must_be_a_number() -> None:
    assert jwt_expiry(make_jwt({"exp": "tomorrow"})) is None
    assert jwt_expiry(make_jwt({"exp": True})) is None
    assert jwt_expiry(make_jwt({})) is None
