"""What the model components' tests (tests/models/test_components_*.py) share: single-threaded numerics."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def one_thread():
    # On a small, busy machine OpenMP pools (HistGradientBoosting) spin and take 50x longer;
    # these tests are about numbers, not speed, so run single-threaded.
    with threadpool_limits(1):
        yield
