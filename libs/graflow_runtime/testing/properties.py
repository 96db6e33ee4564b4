"""What the property tests share: hypothesis settings that make CI reproducible and cheap, and the
strategy that feeds :mod:`graflow_runtime.testing.hostile`'s generators.

``derandomize`` draws the same examples on every run and no example database is written, so a
failure in CI fails again on a laptop; ``deadline=None`` because a loaded 2-core machine makes
timing per example meaningless (a hang is caught by the gRPC deadline of the call instead).
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# A random.Random whose draws hypothesis makes, replays and shrinks (the generators take one).
RANDOMS = st.randoms(use_true_random=False)
