import random

from graflow_scheduler.graph.plan import RetryConfig
from graflow_scheduler.outcomes.retry import NO_RETRY, backoff_delay_ms, retry_delay_ms


def test_delay_grows_by_the_backoff_factor_per_attempt():
    retry = RetryConfig(max_attempts=5, initial_interval_ms=100, backoff_factor=3.0)
    assert [backoff_delay_ms(retry, attempt) for attempt in (1, 2, 3)] == [100, 300, 900]


def test_delay_is_capped_by_the_max_interval():
    retry = RetryConfig(max_attempts=10, initial_interval_ms=100, backoff_factor=2.0, max_interval_ms=250)
    assert backoff_delay_ms(retry, 5) == 250


def test_jitter_spreads_the_delay_within_its_fraction():
    retry = RetryConfig(max_attempts=3, initial_interval_ms=1000, jitter=0.1)
    delays = {backoff_delay_ms(retry, 1, random.Random(seed)) for seed in range(50)}
    assert min(delays) >= 900 and max(delays) <= 1100 and len(delays) > 1


def test_huge_exponents_stay_within_the_uint32_delay():
    retry = RetryConfig(max_attempts=100, initial_interval_ms=2**31, backoff_factor=1e308)
    assert backoff_delay_ms(retry, 99) == 2**32 - 1


def test_no_retry_when_attempts_are_used_up_or_error_is_not_retryable():
    retry = RetryConfig(max_attempts=3, initial_interval_ms=10)
    assert retry_delay_ms(retry, 2, True) == 20
    assert retry_delay_ms(retry, 3, True) == NO_RETRY
    assert retry_delay_ms(retry, 1, False) == NO_RETRY
    assert retry_delay_ms(RetryConfig(max_attempts=1), 1, True) == NO_RETRY
