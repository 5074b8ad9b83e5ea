"""Due-run computation: cron schedule, last run, retry backoff (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from citeline.errors import ConfigError
from citeline.ingest.scheduler import LastRun, RetryPolicy, check_schedule, next_run

pytestmark = pytest.mark.unit

HOURLY = "0 * * * *"
RETRY = RetryPolicy(retries=3, backoff_s=30, max_backoff_s=100)


def t(hour: int, minute: int = 0, second: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


def run(status: str, started: datetime, finished: datetime | None = None, failed: tuple = ()) -> LastRun:
    return LastRun(1, status, started, finished or started + timedelta(seconds=10), failed)


def test_a_source_without_schedule_is_never_planned():
    assert next_run("wiki", None, None, t(10)) is None
    assert next_run("wiki", None, run("succeeded", t(9)), t(10)) is None


def test_a_source_never_synced_is_due_at_once():
    assert next_run("wiki", HOURLY, None, t(10, 17)) == t(10, 17)


def test_next_run_is_the_first_slot_after_the_last_start():
    last = run("succeeded", t(10, 5))
    assert next_run("wiki", HOURLY, last, t(10, 30)) == t(11)
    assert next_run("wiki", "*/15 * * * *", last, t(10, 6)) == t(10, 15)
    assert next_run("wiki", "@daily", last, t(10, 6)) == t(0, day=2)
    # a run that started exactly on its slot is not due again for that slot
    assert next_run("wiki", HOURLY, run("succeeded", t(10)), t(10, 0, 30)) == t(11)


def test_missed_slots_fire_once():
    last = run("succeeded", t(10, 5))
    now = t(15, 30)  # the scheduler was down from 11:00 to 15:00
    assert next_run("wiki", HOURLY, last, now) == t(11)  # due (in the past) ...
    assert next_run("wiki", HOURLY, run("succeeded", now), now) == t(16)  # ... and once it ran, not again


def test_a_running_source_waits_for_its_next_slot():
    assert next_run("wiki", HOURLY, run("running", t(10, 5), finished=None), t(10, 6)) == t(11)


def test_an_interrupted_run_resumes_at_once():
    last = run("interrupted", t(10, 5), finished=t(10, 7))
    assert next_run("wiki", HOURLY, last, t(10, 8)) == t(10, 7)


def test_a_failed_run_is_retried_with_exponential_backoff():
    first = t(10)
    failed = (first,)
    last = run("failed", first, finished=t(10, 0, 10), failed=failed)
    assert next_run("wiki", HOURLY, last, t(10, 0, 11), RETRY) == t(10, 0, 40)  # +30 s
    failed = (t(10, 0, 40), first)
    last = run("failed", t(10, 0, 40), finished=t(10, 0, 50), failed=failed)
    assert next_run("wiki", HOURLY, last, t(10, 1), RETRY) == t(10, 1, 50)  # +60 s
    failed = (t(10, 1, 50), *failed)
    last = run("failed", t(10, 1, 50), finished=t(10, 2), failed=failed)
    assert next_run("wiki", HOURLY, last, t(10, 2), RETRY) == t(10, 3, 40)  # +100 s: capped, not 120


def test_retries_are_bounded_per_slot():
    failed = tuple(t(10, m) for m in (8, 6, 4, 0))  # four failures in the 10:00 slot: 1 + 3 retries
    last = run("failed", t(10, 8), failed=failed)
    assert next_run("wiki", HOURLY, last, t(10, 9), RETRY) == t(11)
    # the next slot's failure starts a new series: failures of earlier slots do not count
    last = run("failed", t(11), finished=t(11, 0, 10), failed=(t(11), *failed))
    assert next_run("wiki", HOURLY, last, t(11, 0, 11), RETRY) == t(11, 0, 40)


def test_the_regular_slot_wins_when_it_comes_before_the_retry():
    last = run("failed", t(10, 0, 5), finished=t(10, 0, 50), failed=(t(10, 0, 5),))
    policy = RetryPolicy(retries=3, backoff_s=300, max_backoff_s=600)
    assert next_run("wiki", "* * * * *", last, t(10, 0, 51), policy) == t(10, 1)


def test_no_retries_waits_for_the_next_slot():
    last = run("failed", t(10, 5), failed=(t(10, 5),))
    assert next_run("wiki", HOURLY, last, t(10, 6), RetryPolicy(retries=0)) == t(11)


def test_backoff_doubles_and_is_capped():
    policy = RetryPolicy(retries=10, backoff_s=2, max_backoff_s=30)
    assert [policy.delay(n).total_seconds() for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]
    assert policy.delay(10_000).total_seconds() == 30
    with pytest.raises(ConfigError):
        RetryPolicy(backoff_s=0)
    with pytest.raises(ConfigError):
        RetryPolicy(backoff_s=10, max_backoff_s=5)


@pytest.mark.parametrize("expr", ["*/30 * * * *", "0 3 * * 1-5", "  0  *  * * * ", "@hourly", "@DAILY"])
def test_valid_schedules(expr):
    assert check_schedule("wiki", expr) == " ".join(expr.split())


@pytest.mark.parametrize("expr", ["", "every hour", "61 * * * *", "* * * *", "0 * * * * *", "@sometimes"])
def test_invalid_schedules_name_the_source_and_the_fix(expr):
    with pytest.raises(ConfigError, match=r"source 'wiki'.*five fields"):
        check_schedule("wiki", expr)
    with pytest.raises(ConfigError):
        next_run("wiki", expr, None, t(10))
