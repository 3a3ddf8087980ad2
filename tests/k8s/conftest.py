"""What every test module of the deployment gets."""

from __future__ import annotations

import pytest

from tests.support.k8s import target_objects, validate


@pytest.fixture(params=validate.TARGETS)
def objects(request) -> list[dict]:
    """Rendered objects of each target (base, dev, prod); the plain base files when there is no kubectl."""
    return target_objects(request.param)
