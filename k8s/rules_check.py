"""The monitoring component (k8s/components/monitoring), checked offline.

1. Its Prometheus Operator objects (PodMonitor, PrometheusRule) against a schema of the fields this
   repository uses, unknown fields refused: kubernetes-validate knows no monitoring.coreos.com kinds,
   and no registry reachable here ships their JSON schema (k8s/README.md, "Monitoring").
2. Every alert: a severity label, summary/description/runbook_url annotations, a `for`, and
   promtool unit tests in which it fires and in which it does not.
3. `promtool check rules` on the PrometheusRules' groups, written to a temporary rules file, and
   `promtool test rules` on copies of tests/*.yaml next to it (their rule_files are rewritten to
   name that file). promtool: $PROMTOOL, the venv's (`make install` unpacks it from Debian's
   `prometheus` package: k8s/fetch_promtool.sh) or PATH's; without one, 1 and 2 alone run.

    .venv/bin/python k8s/rules_check.py    # PMIS_REQUIRE_PROMTOOL=1: fail, not skip, without promtool
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml

K8S_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(K8S_DIR))  # the scripts beside this one
from validate import load_documents  # noqa: E402

COMPONENT = K8S_DIR / "components" / "monitoring"
RULES_FILE = "pmis-rules.yaml"  # the name the unit tests' rule_files give
README_PREFIX = "k8s/README.md#"

# Prometheus durations, as the CRDs' pattern has them.
_DURATION = {"type": "string",
             "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": _STRINGS,
    "matchExpressions": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["key", "operator"],
        "properties": {"key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                       "values": {"type": "array", "items": {"type": "string"}}}}}}}


def _object(kind: str, spec: dict) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {
                "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": kind},
                "metadata": {"type": "object", "additionalProperties": False, "required": ["name"], "properties": {
                    "name": {"type": "string"}, "namespace": {"type": "string"},
                    "labels": _STRINGS, "annotations": _STRINGS}},
                "spec": spec}}


# The fields of monitoring.coreos.com/v1 this repository uses or may reasonably use; a typo, or a
# field of another kind, fails instead of being silently dropped by the API server's pruning.
SCHEMAS = {
    "PodMonitor": _object("PodMonitor", {
        "type": "object", "additionalProperties": False, "required": ["selector", "podMetricsEndpoints"],
        "properties": {
            "selector": _SELECTOR,
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
            "jobLabel": {"type": "string"},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "sampleLimit": {"type": "integer", "minimum": 0},
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port"], "properties": {
                    "port": {"type": "string"}, "path": {"type": "string"}, "scheme": {"enum": ["http", "https"]},
                    "interval": _DURATION, "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
                    "relabelings": {"type": "array", "items": {"type": "object"}},
                    "metricRelabelings": {"type": "array", "items": {"type": "object"}}}}}}}),
    "PrometheusRule": _object("PrometheusRule", {
        "type": "object", "additionalProperties": False, "required": ["groups"],
        "properties": {"groups": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "rules"], "properties": {
                "name": {"type": "string", "minLength": 1}, "interval": _DURATION,
                "rules": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["expr"],
                    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                    "properties": {
                        "record": {"type": "string"}, "alert": {"type": "string"},
                        "expr": {"type": ["string", "integer"]}, "for": _DURATION, "keep_firing_for": _DURATION,
                        "labels": _STRINGS, "annotations": _STRINGS}}}}}}}}),
}


def is_monitoring(obj: dict) -> bool:
    """A Prometheus Operator object (checked here, not by kubernetes-validate)."""
    return str(obj.get("apiVersion", "")).startswith("monitoring.coreos.com/")


def component_objects(component: Path = COMPONENT) -> list[dict]:
    """The component's objects as written (its `resources:` files)."""
    kustomization = load_documents(component / "kustomization.yaml")[0]
    return [o for entry in kustomization.get("resources", []) for o in load_documents(component / entry)]


def structure_errors(objects: list[dict]) -> list[str]:
    """Schema errors of the monitoring.coreos.com objects among `objects` (others are ignored)."""
    errors = []
    for obj in objects:
        if not is_monitoring(obj):
            continue
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        schema = SCHEMAS.get(obj.get("kind"))
        if schema is None:
            errors.append(f"{name}: no schema for this kind here (add one to k8s/rules_check.py)")
            continue
        for e in jsonschema.Draft7Validator(schema).iter_errors(obj):
            errors.append(f"{name}: {'.'.join(str(p) for p in e.absolute_path)}: {e.message}")
    return errors


def rule_groups(objects: list[dict]) -> dict:
    """What promtool reads: the groups of every PrometheusRule, in one rules file's form."""
    return {"groups": [g for o in objects if o.get("kind") == "PrometheusRule" for g in o["spec"]["groups"]]}


def unit_tests(component: Path = COMPONENT) -> dict[Path, dict]:
    return {p: yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted((component / "tests").glob("*.yaml"))}


def policy_errors(groups: dict, tests: dict[Path, dict]) -> list[str]:
    """What every alert must carry, and be tested for: firing once, and staying quiet once."""
    fires, quiet = set(), set()
    for doc in tests.values():
        for case in doc.get("tests", []):
            for t in case.get("alert_rule_test", []):
                (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    errors = []
    for rule in (r for g in groups["groups"] for r in g["rules"] if "alert" in r):
        name, annotations = rule["alert"], rule.get("annotations", {})
        if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            errors.append(f"{name}: label severity must be critical, warning or info")
        missing = {"summary", "description", "runbook_url"} - annotations.keys()
        if missing:
            errors.append(f"{name}: annotations missing: {sorted(missing)}")
        if not str(annotations.get("runbook_url", "")).startswith(README_PREFIX):
            errors.append(f"{name}: runbook_url must point to a section of k8s/README.md ({README_PREFIX}...)")
        if not rule.get("for"):
            errors.append(f"{name}: no `for`: one bad evaluation would notify")
        if name not in fires:
            errors.append(f"{name}: no unit test in which it fires ({COMPONENT.name}/tests/)")
        if name not in quiet:
            errors.append(f"{name}: no unit test in which it must not fire ({COMPONENT.name}/tests/)")
    return errors


def find_promtool() -> str | None:
    """$PROMTOOL, the venv's, or PATH's; PROMTOOL=none: behave as if there were none."""
    if os.environ.get("PROMTOOL", "").lower() == "none":
        return None
    for c in (os.environ.get("PROMTOOL"), str(Path(sys.executable).parent / "promtool"), shutil.which("promtool")):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def run_promtool(promtool: str, groups: dict, tests: dict[Path, dict]) -> list[str]:
    errors = []
    with tempfile.TemporaryDirectory(prefix="pmis-rules-") as tmp:
        rules = Path(tmp) / RULES_FILE
        rules.write_text(yaml.safe_dump(groups, sort_keys=False))
        out = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            return [f"promtool check rules:\n{out.stdout}{out.stderr}"]
        copies = []
        for path, doc in tests.items():
            copies.append(Path(tmp) / path.name)
            copies[-1].write_text(yaml.safe_dump({**doc, "rule_files": [RULES_FILE]}, sort_keys=False))
        if copies:
            out = subprocess.run([promtool, "test", "rules", *map(str, copies)], capture_output=True, text=True,
                                 timeout=300, cwd=tmp)
            if out.returncode != 0:
                errors.append(f"promtool test rules:\n{out.stdout}{out.stderr}")
    return errors


def check(promtool: str | None) -> list[str]:
    """Every problem found (empty: all fine). Without promtool, the checks that need it are left out."""
    objects = component_objects()
    groups, tests = rule_groups(objects), unit_tests()
    errors = structure_errors(objects) + policy_errors(groups, tests)
    if promtool is not None and not errors:
        errors += run_promtool(promtool, groups, tests)
    return errors


def main() -> int:
    promtool = find_promtool()
    errors = check(promtool)
    for e in errors:
        print(f"INVALID {e}")
    if promtool is None:
        required = os.environ.get("PMIS_REQUIRE_PROMTOOL") == "1"
        print("promtool not found (make install fetches it: k8s/fetch_promtool.sh): rule check and rule unit tests "
              + ("REQUIRED (PMIS_REQUIRE_PROMTOOL=1): FAILED" if required else "SKIPPED"))
        errors += ["promtool required"] if required else []
    else:
        print(f"monitoring rules: promtool check rules + {len(unit_tests())} unit test files "
              + ("FAILED" if errors else "passed"))
    print("rules-check: FAILED" if errors else "rules-check: OK")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
