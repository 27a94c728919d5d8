"""The pieces of webhook delivery that need no network: the retry schedule, Retry-After, signatures,
secrets at rest."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from app.config import Settings
from app.domain.webhook_secrets import SecretBox, new_secret
from app.webhooks.retry import RetrySchedule
from app.webhooks.sender import parse_retry_after, sign

SCHEDULE = RetrySchedule.of([5, 300, 1800, 7200, 18000, 36000], max_attempts=9)


def test_schedule_first_at_once_then_the_delays_then_the_last_repeats_until_the_budget() -> None:
    assert [SCHEDULE.next_delay(n) for n in range(0, 10)] == [
        0,
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        36000,
        36000,
        None,
    ]


def test_the_default_settings_give_the_documented_schedule() -> None:
    s = Settings(_env_file=None)
    schedule = RetrySchedule.of(s.webhook_retry_schedule, s.webhook_max_attempts)
    assert [schedule.nominal(n) for n in range(1, 8)] == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert schedule.nominal(s.webhook_max_attempts) is None


def test_jitter_spreads_delays_within_bounds_and_differs_between_deliveries() -> None:
    schedule = RetrySchedule.of([100], max_attempts=5, jitter=0.2)
    rng = random.Random(7)
    delays = [schedule.next_delay(1, rng=rng) for _ in range(200)]
    assert all(80 <= d <= 120 for d in delays)
    assert len({round(d, 3) for d in delays}) > 100  # not one value for everyone
    assert min(delays) < 90 and max(delays) > 110  # both ways


def test_retry_after_lengthens_a_delay_but_is_bounded_and_never_shortens_it() -> None:
    assert SCHEDULE.next_delay(1, retry_after=60) == 60
    assert SCHEDULE.next_delay(1, retry_after=10**9, retry_after_cap=3600) == 3600
    assert SCHEDULE.next_delay(2, retry_after=1) == 300
    assert SCHEDULE.next_delay(9, retry_after=1) is None  # no attempt left, whatever it asks


def test_bad_schedules_are_refused() -> None:
    for delays, attempts, jitter in (([], 3, 0), ([-1], 3, 0), ([1], 0, 0), ([1], 3, 1.5)):
        with pytest.raises(ValueError):
            RetrySchedule.of(delays, attempts, jitter)
    with pytest.raises(ValueError):
        Settings(_env_file=None, webhook_retry_schedule="5,-1")
    # A lease that could end while its attempt is still running would let another sender repeat it.
    with pytest.raises(ValueError):
        Settings(_env_file=None, webhook_timeout_seconds=30, webhook_lease_seconds=20)


def test_retry_after_seconds_and_http_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("Thu, 01 Jan 2026 12:01:30 GMT", now) == 90
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None


def test_every_secret_that_signs_verifies_with_the_reference_library() -> None:
    old, new = new_secret(), new_secret()
    assert old.startswith("whsec_") and old != new
    now = datetime.now(UTC)
    body = '{"type":"job.succeeded"}'
    header = sign([new, old], "msg_1", now, body)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": header,
    }
    assert (
        Webhook(old).verify(body, headers) == Webhook(new).verify(body, headers) == {"type": "job.succeeded"}
    )
    # A changed body, id or timestamp no longer verifies.
    from standardwebhooks.webhooks import WebhookVerificationError

    for changed in (
        {**headers, "webhook-id": "msg_2"},
        {**headers, "webhook-timestamp": str(int(now.timestamp()) - 1)},
    ):
        with pytest.raises(WebhookVerificationError):
            Webhook(new).verify(body, changed)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body.replace("succeeded", "failed"), headers)


def test_secrets_are_encrypted_at_rest_and_need_the_server_key() -> None:
    secret = new_secret()
    sealed = SecretBox("server key A").seal(secret)
    assert secret not in sealed and secret.removeprefix("whsec_") not in sealed
    assert SecretBox("server key A").open(sealed) == secret
    assert SecretBox("server key B").open(sealed) is None  # another server key cannot read it
