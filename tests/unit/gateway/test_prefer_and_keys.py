"""The request headers of POST /v1/generate that change how it answers: Prefer and Idempotency-Key."""

from __future__ import annotations

import pytest

from app.domain.errors import ValidationFailed
from app.domain.idempotency import check_key, request_hash
from app.domain.waiting import parse_prefer_wait


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("respond-async", None),  # other preferences are not a wait
        ("wait=5", 5),
        ("WAIT=5", 5),
        ("wait", 60),  # alone: the maximum
        ("respond-async, wait=10", 10),
        ('wait="7"', 7),
        ("wait=0", 0),
        ("wait=600", 60),  # capped
        ("wait=99999999999999", 60),
        ("handling=lenient; foo, wait=3", 3),
    ],
)
def test_prefer_wait(header: str | None, expected: int | None) -> None:
    assert parse_prefer_wait(header, 60) == expected


@pytest.mark.parametrize("header", ["wait=soon", "wait=-1", "wait=1.5"])
def test_prefer_wait_that_is_not_a_number_is_refused(header: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_prefer_wait(header, 60)


@pytest.mark.parametrize("key", ["a", "order-17", "550e8400-e29b-41d4-a716-446655440000", "x" * 255, "!~"])
def test_good_keys(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "x" * 256, "with space", "tab\there", "é", "new\nline"])
def test_bad_keys(key: str) -> None:
    with pytest.raises(ValidationFailed):
        check_key(key)


def test_the_request_hash_ignores_key_order_only() -> None:
    assert request_hash({"a": 1, "b": {"c": 2, "d": 3}}) == request_hash({"b": {"d": 3, "c": 2}, "a": 1})
    assert request_hash({"a": 1}) != request_hash({"a": 2})
