"""The monitoring component (k8s/components/monitoring): it renders into each overlay and adds objects
without changing any; its PodMonitors find every server's metrics port; its NetworkPolicy admits
Prometheus there; its rules pass promtool and their unit tests (k8s/rules_check.py), and those tests
catch a broken expression; rules and dashboard use only metrics that exist; every runbook link lands
on a section of k8s/README.md.

promtool comes from `make install` (k8s/fetch_promtool.sh); without it those cases skip, unless
PMIS_REQUIRE_PROMTOOL=1, which makes them fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import yaml

from tests.support.k8s import (KUBECTL, ROOT, by_kind, copy_k8s, load_module, needs_kubectl, render_with_components,
                               selects, validate)

rules_check = load_module("k8s_rules_check", ROOT / "k8s" / "rules_check.py")
COMPONENT = rules_check.COMPONENT
PROMTOOL = rules_check.find_promtool()
SERVERS = ["gateway", "content", "collaborative", "success", "ranker", "trainer"]
OVERLAYS = {"overlays/dev": "pmis-dev", "overlays/prod": "pmis"}
# Series the rules and the dashboard read from kube-state-metrics, not from this repository's code.
KUBE_STATE_METRICS = {"kube_horizontalpodautoscaler_status_current_replicas",
                      "kube_horizontalpodautoscaler_spec_max_replicas"}


def needs_promtool(test):
    """Skip without promtool, unless PMIS_REQUIRE_PROMTOOL=1 (then `promtool()` fails the test)."""
    if os.environ.get("PMIS_REQUIRE_PROMTOOL") == "1":
        return test
    reason = "no promtool (make install fetches it: k8s/fetch_promtool.sh)"
    return pytest.mark.skipif(PROMTOOL is None, reason=reason)(test)


def promtool() -> str:
    assert PROMTOOL is not None, "PMIS_REQUIRE_PROMTOOL=1, no promtool: k8s/fetch_promtool.sh .venv/bin/promtool"
    return PROMTOOL


def prometheus_rule() -> dict:
    (rule,) = [o for o in rules_check.component_objects() if o["kind"] == "PrometheusRule"]
    return rule


def alerts() -> dict[str, dict]:
    return {r["alert"]: r for g in prometheus_rule()["spec"]["groups"] for r in g["rules"] if "alert" in r}


@pytest.fixture(scope="module")
def renders(tmp_path_factory) -> dict[str, tuple[list[dict], list[dict]]]:
    """Each overlay rendered (without, with the component), as if its kustomization listed it."""
    out = {}
    for overlay in OVERLAYS:
        work = copy_k8s(tmp_path_factory.mktemp("monitoring"))
        out[overlay] = (validate.render(overlay, KUBECTL, work),
                        render_with_components(work, overlay, ["monitoring"], first=False))
    return out


# ---------------------------------------------------------------------------- rendering

@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_component_renders_valid_objects_and_changes_nothing_else(renders, overlay):
    without, with_monitoring = renders[overlay]
    added = [o for o in with_monitoring if o not in without]
    assert [o for o in without if o not in with_monitoring] == []  # enabling it rolls nothing out
    kinds = sorted(o["kind"] for o in added)
    assert kinds == ["ConfigMap", "NetworkPolicy", *["PodMonitor"] * len(SERVERS), "PrometheusRule"], kinds
    assert all(o["metadata"]["namespace"] == OVERLAYS[overlay] for o in added)
    crds = [o for o in added if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert validate.validate_objects([o for o in added if o not in crds]) == []
    assert rules_check.structure_errors(crds) == []
    dashboard = by_kind(added, "ConfigMap")["pmis-grafana-dashboard"]  # fixed name: the sidecar replaces it
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["pmis.json"] == (COMPONENT / "dashboards" / "pmis.json").read_text()


@needs_kubectl
def test_podmonitors_scrape_every_server_once_on_its_metrics_port(renders):
    objs = renders["overlays/prod"][1]
    monitors = by_kind(objs, "PodMonitor").values()
    for name, deployment in by_kind(objs, "Deployment").items():
        template = deployment["spec"]["template"]
        container = template["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if "metrics" not in ports:
            continue
        matching = [m for m in monitors if selects(m["spec"]["selector"], template["metadata"]["labels"])]
        assert len(matching) == 1, f"{name}: scraped by {len(matching)} PodMonitors"  # twice = every rate doubled
        (endpoint,) = matching[0]["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] in ports, name
        annotations = template["metadata"].get("annotations", {})  # the same target as the annotations name
        assert str(ports[endpoint["port"]]) == annotations.get("prometheus.io/port", str(ports[endpoint["port"]]))
        assert endpoint["path"] == annotations.get("prometheus.io/path", "/metrics")
    covered = {m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for m in monitors}
    assert covered == set(SERVERS)


def _peer_admits(peer: dict, namespace_labels: dict, pod_labels: dict) -> bool:
    """One `from` entry, for a source in ANOTHER namespace: without a namespaceSelector it admits only
    the policy's own namespace; with both selectors, both must match."""
    return ("namespaceSelector" in peer and selects(peer["namespaceSelector"], namespace_labels)
            and selects(peer.get("podSelector", {}), pod_labels))


def admits(policies, pod_labels: dict, port: str, source_namespace: dict, source_pod: dict) -> bool:
    """Whether any of `policies` lets a pod from another namespace reach `port` of a pod labelled so."""
    return any(
        selects(p["spec"]["podSelector"], pod_labels)
        and any(any(x.get("port") == port for x in rule.get("ports", []))
                and any(_peer_admits(peer, source_namespace, source_pod) for peer in rule.get("from", []))
                for rule in p["spec"].get("ingress", []))
        for p in policies)


def test_network_policy_admits_prometheus_pods_to_the_metrics_ports_only():
    (policy,) = [o for o in rules_check.component_objects() if o["kind"] == "NetworkPolicy"]
    monitoring = {"kubernetes.io/metadata.name": "observability", "pmis.io/monitoring": "true"}
    elsewhere = {"kubernetes.io/metadata.name": "shop"}
    prometheus = {"app.kubernetes.io/name": "prometheus", "prometheus": "k8s"}
    other = {"app": "grafana"}
    for name in SERVERS:
        pod = {"app.kubernetes.io/name": "pmis", "app.kubernetes.io/component": name}
        assert admits([policy], pod, "metrics", monitoring, prometheus), name
        assert not admits([policy], pod, "grpc", monitoring, prometheus), name
        assert not admits([policy], pod, "metrics", monitoring, other), name  # not every pod there
        assert not admits([policy], pod, "metrics", elsewhere, prometheus), name  # nor every Prometheus


# ---------------------------------------------------------------------------- rules

def test_monitoring_objects_have_the_expected_structure_and_every_alert_is_complete_and_tested():
    assert rules_check.check(None) == []  # structure + policy (severity, annotations, for, tests both ways)


def test_structure_check_refuses_typos_and_bad_durations():
    objs = yaml.safe_load_all((COMPONENT / "podmonitors.yaml").read_text())
    monitor = next(iter(objs))
    monitor["spec"]["podMetricEndpoints"] = monitor["spec"].pop("podMetricsEndpoints")
    rule = prometheus_rule()
    rule["spec"]["groups"][1]["rules"][0]["for"] = "5 minutes"
    rule["spec"]["groups"][1]["rules"][1]["severity"] = "critical"  # belongs under labels
    errors = rules_check.structure_errors([monitor, rule])
    assert any("podMetricEndpoints" in e for e in errors)
    assert any("5 minutes" in e for e in errors)
    assert any("severity" in e for e in errors)


@needs_promtool
def test_rules_pass_promtool_check_and_their_unit_tests():
    assert rules_check.check(promtool()) == []


@needs_promtool
def test_rule_unit_tests_catch_a_broken_expression(tmp_path):
    """Not a formality: UNAVAILABLE dropped from the server faults makes the burn tests fail."""
    copy = tmp_path / "monitoring"
    shutil.copytree(COMPONENT, copy)
    path = copy / "prometheusrule.yaml"
    head, sep, body = path.read_text().partition("apiVersion:")
    assert 'code=~"UNAVAILABLE|' in body
    path.write_text(head + sep + body.replace('code=~"UNAVAILABLE|', 'code=~"'))
    errors = rules_check.run_promtool(promtool(), rules_check.rule_groups(rules_check.component_objects(copy)),
                                      rules_check.unit_tests(copy))
    assert errors and "PmisRecommendErrorBudgetFastBurn" in errors[0]


def test_champion_age_alert_uses_the_retraining_trigger_threshold():
    from models.lifecycle.thresholds import DEFAULT_MAX_AGE_HOURS

    (hours,) = {float(d["data"]["PMIS_RETRAIN_MAX_AGE_HOURS"])  # what the CronJob's trigger uses
                for d in validate.load_documents(ROOT / "k8s" / "base" / "config.yaml")
                if "PMIS_RETRAIN_MAX_AGE_HOURS" in d.get("data", {})}
    assert hours == DEFAULT_MAX_AGE_HOURS
    assert f"> ({hours:g} + 24) * 3600" in alerts()["PmisChampionTooOld"]["expr"]


def test_latency_slo_reads_a_bucket_the_histogram_has():
    from services.common import telemetry

    buckets = {f"{b:g}" for b in telemetry.LATENCY._upper_bounds}
    records = prometheus_rule()["spec"]["groups"][0]["rules"]
    used = {le for r in records for le in re.findall(r'le="([^"]+)"', r["expr"])}
    assert used and used <= buckets


def _slug(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_runbook_url_is_a_section_of_the_k8s_readme():
    readme = (ROOT / "k8s" / "README.md").read_text()
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", readme, flags=re.M)}
    for name, rule in alerts().items():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("k8s/README.md#") and url.split("#", 1)[1] in anchors, (name, url)


# ---------------------------------------------------------------------------- metric names

def exported_metrics() -> set[str]:
    """Every series name the servers' code exports (prometheus_client's registry after importing it)."""
    import importlib

    from prometheus_client import REGISTRY

    for module in ("services.common.telemetry", "services.trainer.runner"):  # the servers', the trainer's
        importlib.import_module(module)  # defining the metrics registers them

    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"],
                "summary": ["_count", "_sum", ""], "info": ["_info"]}
    return {m.name + s for m in REGISTRY.collect() for s in suffixes.get(m.type, [""])}


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (enough PromQL for the rules and the dashboard)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # matchers and ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    expr = re.sub(r"\$\w+", " ", expr)  # Grafana variables
    names = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()", expr)  # "(" next: a function
    return {n for n in names if n.lower() not in PROMQL_WORDS}


def test_metric_name_extraction():
    assert metric_names('sum by (namespace) (rate(a_total{code=~"X|Y"}[5m])) / on (namespace) group_left b') == \
        {"a_total", "b"}
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(h_bucket{x="$ns"}[$__rate_interval])))') == \
        {"h_bucket"}
    assert metric_names("time() - pmis:x:ratio_rate5m > (168 + 24) * 3600") == {"pmis:x:ratio_rate5m"}


def test_rules_read_only_metrics_that_exist():
    groups = prometheus_rule()["spec"]["groups"]
    known = exported_metrics() | KUBE_STATE_METRICS | {r["record"] for g in groups for r in g["rules"] if "record" in r}
    for rule in (r for g in groups for r in g["rules"]):
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: {unknown}"
    assert "pmis_bundle_trained_timestamp_seconds" in exported_metrics()


def test_dashboard_uses_a_datasource_variable_and_only_metrics_that_exist():
    dashboard = json.loads((COMPONENT / "dashboards" / "pmis.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    records = {r["record"] for r in prometheus_rule()["spec"]["groups"][0]["rules"]}
    known = exported_metrics() | KUBE_STATE_METRICS | records
    used = set()
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            names = metric_names(target["expr"])
            assert names and names <= known, (panel["title"], names - known)
            assert 'namespace="$namespace"' in target["expr"], panel["title"]
            used |= names
    # what the issue asks the dashboard to show
    assert used >= {"pmis_grpc_requests_total", "pmis_grpc_request_seconds_bucket",
                    "pmis:recommend_errors:ratio_rate5m", "pmis:recommend_slow:ratio_rate5m",
                    "pmis_gateway_degraded_total", "pmis_grpc_shed_total", "pmis_grpc_in_flight",
                    "pmis_grpc_max_in_flight", "pmis_bundle_info", "pmis_bundle_version", "pmis_trainer_jobs"}
