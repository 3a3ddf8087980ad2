"""What the tests of bundles and of the model components (tests/models/test_bundle_*.py,
tests/models/test_components_*.py) share: unsigned bundles by default, a small fitted estimator to
pickle, and a manifest rewritten the way a careful attacker would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from models.bundle import signing


@pytest.fixture(autouse=True)
def no_signing_key(unsigned_bundles):
    """Tests opt in to signing explicitly; a key in the environment must not leak in."""


def rewrite_manifest(path: Path, edit) -> None:
    """Edit a manifest and re-sign it with the current key, like a careful attacker would."""
    mpath = path / "manifest.json"
    manifest = json.loads(mpath.read_text())
    edit(manifest)
    manifest.pop("signature", None)
    key = signing.signing_key()
    if key is not None:
        manifest["signature"] = signing.sign(manifest, key)
    mpath.write_text(json.dumps(manifest))


def fitted_model() -> tuple[LogisticRegression, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    return LogisticRegression().fit(X, y), X
