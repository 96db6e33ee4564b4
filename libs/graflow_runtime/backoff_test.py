from graflow_runtime.backoff import Backoff, backoff_delay


def test_delays_double_from_the_initial_one_up_to_the_cap():
    assert [backoff_delay(n) for n in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert [backoff_delay(n, initial=0.1, cap=5.0) for n in range(8)] == [
        0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0
    ]


def test_a_long_outage_keeps_the_cap_instead_of_overflowing():
    assert backoff_delay(5000) == 2.0


def test_backoff_counts_failures_until_reset():
    backoff = Backoff(initial=0.1, cap=0.3, jitter=0.0)
    assert [backoff.next_delay() for _ in range(4)] == [0.1, 0.2, 0.3, 0.3]
    backoff.reset()
    assert backoff.next_delay() == 0.1


def test_each_delay_is_drawn_from_80_to_100_percent_of_its_nominal_value_by_default():
    backoff = Backoff(initial=1.0, cap=1.0)
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(0.8 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 1
    assert Backoff(initial=1.0, cap=1.0, jitter=0.0).next_delay() == 1.0
