"""What an SRE checks before accepting the deployment (issue 16): autoscaling that survives re-applies
and rollouts, a canary behind the same Service, images by digest, one identity per workload, the
signing key as a file, native thread pools sized to the CPU limit, bounded ephemeral storage, PDBs
that never block a drain, training pods protected from consolidation and failing fast on bad input,
zone spreading, and the trainer reachable by operators and training pods only.

Each case reads the rendered base and overlays (kubectl kustomize; the plain base without kubectl),
or renders an overlay with one of the opt-in components (k8s/components/)."""

from __future__ import annotations

import math
import os
import re

import pytest
import yaml

from services.components import COMPONENT_MODULES
from services.common import admission
from tests.support.k8s import (KUBECTL, ROOT, byte_count, by_kind, container_env, copy_k8s, cores, load_module,
                               needs_kubectl, pod_templates, render_with_components, rendered, selects, validate)

COMPONENTS = list(COMPONENT_MODULES)
SERVING = [*COMPONENTS, "gateway"]
TRAINING = ["trainer", "train", "retrain"]
TRACK = "pmis.io/track"
RUN = "pmis.io/training-run"
rollout_check = load_module("k8s_rollout_check", ROOT / "k8s" / "rollout_check.py")
set_image = load_module("k8s_set_image", ROOT / "k8s" / "set_image.py")
entrypoint = load_module("docker_entrypoint_ops", ROOT / "docker" / "entrypoint.py")


def hpa_targets(objs: list[dict]) -> dict[str, dict]:
    """The HPA of every Deployment an HPA scales, by Deployment name."""
    return {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind(objs, "HorizontalPodAutoscaler").values()
            if h["spec"]["scaleTargetRef"]["kind"] == "Deployment"}


# ---------------------------------------------------------------------------- autoscaling

def test_no_deployment_an_hpa_scales_sets_replicas(objects):
    """A re-apply (kubectl apply, a GitOps sync) must not reset a scaled-up Deployment to the
    manifest's count: the HPA alone owns `replicas`. Only Deployments without an HPA set it."""
    deployments, hpas = by_kind(objects, "Deployment"), hpa_targets(objects)
    assert set(hpas) == set(SERVING)
    for name, d in deployments.items():
        if name in hpas:
            assert "replicas" not in d["spec"], name
        else:
            assert d["spec"]["replicas"] == 1, name  # the trainer: a single writer, no HPA


def test_every_hpa_scales_up_fast_and_down_slowly(objects):
    for name, hpa in hpa_targets(objects).items():
        behavior = hpa["spec"]["behavior"]
        up, down = behavior["scaleUp"], behavior["scaleDown"]
        assert up["stabilizationWindowSeconds"] <= 60, name
        assert up.get("selectPolicy", "Max") == "Max", name
        # at least doubling, or +4 pods, within 15 s
        assert any(p["periodSeconds"] <= 15 and ((p["type"] == "Percent" and p["value"] >= 100)
                                                 or (p["type"] == "Pods" and p["value"] >= 4))
                   for p in up["policies"]), name
        assert down["stabilizationWindowSeconds"] >= 300, name
        assert down["policies"] and down.get("selectPolicy", "Max") != "Disabled", name
        # every policy lets at most one pod, or half of them, go per minute (selectPolicy Min or not,
        # the fastest policy is still bounded)
        for p in down["policies"]:
            assert p["periodSeconds"] >= 60, (name, p)
            assert (p["type"] == "Pods" and p["value"] <= 1) or (p["type"] == "Percent" and p["value"] <= 50), (name, p)
        cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
        assert cpu and cpu[0]["resource"]["target"]["averageUtilization"] <= 80, name


def _admission_limit(objs: list[dict], name: str, monkeypatch) -> int:
    """The in-flight limit the server computes from the pod's environment (its own parse_config)."""
    deployment = by_kind(objs, "Deployment")[name]
    env = container_env(objs, deployment["spec"]["template"]["spec"]["containers"][0])
    for key in [k for k in os.environ if k.startswith("PMIS_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("PMIS_") and not value.startswith("<from"):
            monkeypatch.setenv(key, value)
    if name == "gateway":
        from gateway.server import parse_config as gateway_config

        return gateway_config([]).max_in_flight
    from services.common.server import parse_config

    return parse_config(name, 1, 2, []).max_in_flight


@needs_kubectl
@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_in_flight_autoscaling_targets_70_percent_of_the_admission_limit(tmp_path, overlay, monkeypatch):
    """The opt-in component adds a Pods metric on `pmis_grpc_in_flight` beside CPU, at 70 % of the
    limit each server really applies (recomputed from the rendered environment)."""
    objs = render_with_components(copy_k8s(tmp_path), overlay, ["autoscale-in-flight"])
    assert validate.validate_objects(objs) == []
    assert by_kind(objs, "Deployment").keys() == by_kind(rendered(overlay), "Deployment").keys()
    for name, hpa in hpa_targets(objs).items():
        metrics = hpa["spec"]["metrics"]
        assert [m["type"] for m in metrics] == ["Resource", "Pods"], name
        pods = metrics[1]["pods"]
        assert pods["metric"] == {"name": "pmis_grpc_in_flight"}
        limit = _admission_limit(objs, name, monkeypatch)
        assert limit == (admission.GATEWAY_MAX_IN_FLIGHT if name == "gateway" else 16)  # the defaults in force
        assert pods["target"] == {"type": "AverageValue", "averageValue": str(math.floor(0.7 * limit))}, name
    # without the component nothing asks for a custom metric (no adapter: no scale-down at all)
    for hpa in by_kind(rendered(overlay), "HorizontalPodAutoscaler").values():
        assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource"}


# ---------------------------------------------------------------------------- track and canary

def test_serving_deployments_select_their_track_and_nothing_else_does(objects):
    deployments = by_kind(objects, "Deployment")
    for name in SERVING:
        d = deployments[name]
        assert d["spec"]["selector"]["matchLabels"][TRACK] == "stable", name
        assert d["spec"]["template"]["metadata"]["labels"][TRACK] == "stable", name
        for c in d["spec"]["template"]["spec"]["topologySpreadConstraints"]:
            assert TRACK not in str(c["labelSelector"]), name  # spread stable and canary pods together
    assert TRACK not in str(deployments["trainer"]["spec"]["selector"])  # no canary for the single writer
    # Services, PDBs and NetworkPolicies select every track: a canary is behind the same Service
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        for o in by_kind(objects, kind).values():
            assert TRACK not in yaml.safe_dump(o["spec"]), (kind, o["metadata"]["name"])


def _pod_template_without_canary_differences(d: dict) -> dict:
    t = yaml.safe_load(yaml.safe_dump(d["spec"]["template"]))
    t["metadata"]["labels"].pop(TRACK)
    t["metadata"]["annotations"].pop(RUN)
    container = t["spec"]["containers"][0]
    for e in container["env"]:
        if e["name"] == "PMIS_BUNDLE_VERSION":
            e["value"] = "<pin>"
    container["env"].sort(key=lambda e: e["name"])  # the overlay's pin patch moves its entry first
    return t


@needs_kubectl
@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_canary_component_renders_and_serves_behind_the_same_headless_service(tmp_path, overlay):
    objs = render_with_components(copy_k8s(tmp_path), overlay, ["canary-content"])
    assert validate.validate_objects(objs) == []
    deployments = by_kind(objs, "Deployment")
    stable, canary = deployments["content"], deployments["content-canary"]
    assert canary["spec"]["replicas"] == 1 and "content-canary" not in hpa_targets(objs)
    assert canary["spec"]["selector"]["matchLabels"][TRACK] == "canary"
    stable_pods, canary_pods = stable["spec"]["template"]["metadata"], canary["spec"]["template"]["metadata"]
    # the headless Service (the gateway's DNS target), the PDB and the gateway-only policy cover both
    service = by_kind(objs, "Service")["content"]
    assert service["spec"]["clusterIP"] == "None"
    for selector in ({"matchLabels": service["spec"]["selector"]},
                     by_kind(objs, "PodDisruptionBudget")["content"]["spec"]["selector"],
                     by_kind(objs, "NetworkPolicy")["components-from-gateway"]["spec"]["podSelector"]):
        assert selects(selector, stable_pods["labels"]) and selects(selector, canary_pods["labels"])
    # ... while neither Deployment (nor the stable one's HPA, which uses its selector) claims the other's pods
    assert not selects(stable["spec"]["selector"], canary_pods["labels"])
    assert not selects(canary["spec"]["selector"], stable_pods["labels"])
    # the same pod as the stable one but for track and pin: the overlay's label-based patches
    # (prod: rollout timing, resources, the database URL) reached it too
    assert _pod_template_without_canary_differences(canary) == _pod_template_without_canary_differences(stable)
    pins = rollout_check.pins(objs)
    assert pins["content-canary"].version != pins["content"].version
    # adding the canary is a change of one pin, of one run: the rollout check lets it through
    assert rollout_check.check(rendered(overlay), objs) == []
    assert set(rollout_check.pins(objs)) == {*COMPONENTS, "content-canary"}


# ---------------------------------------------------------------------------- images

DIGEST_REF = re.compile(r"[a-z0-9.:/_-]+@sha256:[0-9a-f]{64}")


@needs_kubectl
def test_prod_runs_images_by_digest():
    images = [(owner, c["image"], c.get("imagePullPolicy"))
              for owner, spec, _ in pod_templates(rendered("overlays/prod"))
              for c in [*spec.get("initContainers", []), *spec["containers"]]]
    assert len(images) >= 8
    for owner, image, policy in images:
        assert DIGEST_REF.fullmatch(image), (owner, image)  # no tag-only reference
        assert image.startswith("registry.example.com/pmis/pmis-recommender@"), image
        assert policy in ("IfNotPresent", "Always"), owner  # with a digest, IfNotPresent pulls the same bytes
    for target in ("base", "overlays/dev"):  # a tag elsewhere, never a moving one
        for owner, spec, _ in pod_templates(rendered(target)):
            for c in spec["containers"]:
                assert DIGEST_REF.fullmatch(c["image"]) or re.fullmatch(r"[a-z0-9./-]+:\d+\.\d+\.\d+", c["image"]), c["image"]


def test_set_image_pins_a_digest_like_kustomize_edit_keeping_comments(tmp_path):
    work = copy_k8s(tmp_path)
    kfile = work / "overlays" / "prod" / "kustomization.yaml"
    before = kfile.read_text()
    digest = "sha256:" + "ab" * 32
    assert set_image.set_image(kfile, *set_image.parse(f"registry.test:5000/team/pmis@{digest}")) is True
    after = kfile.read_text()
    assert [line for line in before.splitlines() if line.lstrip().startswith("#")] == \
        [line for line in after.splitlines() if line.lstrip().startswith("#")]
    k = yaml.safe_load(after)
    assert k["images"] == [{"name": "pmis-recommender", "newName": "registry.test:5000/team/pmis", "digest": digest}]
    assert set_image.set_image(kfile, "registry.test:5000/team/pmis", digest) is False  # idempotent
    # a tag-only entry (dev) becomes a digest one
    dev = work / "overlays" / "dev" / "kustomization.yaml"
    set_image.set_image(dev, "registry.test/pmis", digest)
    assert yaml.safe_load(dev.read_text())["images"] == [{"name": "pmis-recommender", "newName": "registry.test/pmis",
                                                          "digest": digest}]
    for bad in ("registry.test/pmis:1.2", "registry.test/pmis@sha256:abc", "registry.test/pmis", "Registry/pmis@" + digest):
        with pytest.raises(set_image.ImageError):
            set_image.parse(bad)
    if KUBECTL is not None:
        for _, spec, _ in pod_templates(validate.render("overlays/prod", KUBECTL, work)):
            assert {c["image"] for c in spec["containers"]} == {f"registry.test:5000/team/pmis@{digest}"}


# ---------------------------------------------------------------------------- identities and secrets

def test_each_workload_has_its_own_service_account_without_a_token(objects):
    accounts = by_kind(objects, "ServiceAccount")
    used: dict[str, set[str]] = {}
    for owner, spec, _ in pod_templates(objects):
        sa = spec["serviceAccountName"]
        assert sa in accounts, (owner, sa)
        assert accounts[sa]["automountServiceAccountToken"] is False and spec["automountServiceAccountToken"] is False
        used.setdefault(sa, set()).add(owner)
    # one per workload; the two training workloads (train, retrain) share theirs
    assert {frozenset(owners) for owners in used.values()} >= {frozenset({name}) for name in [*SERVING, "trainer"]}
    assert used["pmis-training"] == {"train", "retrain"}
    assert all(len(owners) == 1 for sa, owners in used.items() if sa != "pmis-training")
    assert "pmis" not in accounts and "default" not in used


SIGNING_KEY = "bundle-signing-key"


def test_signing_key_is_a_mounted_file_never_an_env_var(objects):
    readers = 0
    for owner, spec, _ in pod_templates(objects):
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            names = {e["name"] for e in c.get("env", [])}
            assert "PMIS_BUNDLE_SIGNING_KEY" not in names, (owner, c["name"])
            assert not any("secretRef" in ref for ref in c.get("envFrom", [])), (owner, c["name"])
            keyfile = next((e["value"] for e in c.get("env", []) if e["name"] == "PMIS_BUNDLE_SIGNING_KEY_FILE"), None)
            if owner in [*COMPONENTS, *TRAINING] and c in spec["containers"]:
                assert keyfile, (owner, c["name"])
            if keyfile is None:
                continue
            readers += 1
            folder, filename = keyfile.rsplit("/", 1)
            mount = next(m for m in c["volumeMounts"] if m["mountPath"] == folder)
            assert mount["readOnly"] is True and "subPath" not in mount  # subPath would never see a rotation
            secret = volumes[mount["name"]]["secret"]
            assert secret["secretName"] == "pmis-secrets"
            assert {"key": SIGNING_KEY, "path": filename} in secret["items"]
            assert secret["defaultMode"] & 0o007 == 0  # not world-readable
        if owner in ("train", "retrain"):  # training needs the key, not the admin token
            items = [i["key"] for v in spec["volumes"] if "secret" in v for i in v["secret"]["items"]]
            assert items == [SIGNING_KEY], owner
    assert readers == len(COMPONENTS) + len(TRAINING)


# ---------------------------------------------------------------------------- resources

def _thread_count(objs, container: dict, name: str) -> int:
    spec = next((e for e in container.get("env", []) if e["name"] == name), None)
    if spec is not None and "valueFrom" in spec:
        ref = spec["valueFrom"]["resourceFieldRef"]
        assert ref["resource"] == "limits.cpu" and str(ref.get("divisor", "1")) == "1", (container["name"], name)
        return math.ceil(cores(container["resources"]["limits"]["cpu"]))  # what the downward API gives
    return int(container_env(objs, container)[name])


def test_native_thread_pools_match_the_cpu_limit(objects):
    seen = set()
    for owner, spec, _ in pod_templates(objects):
        for c in spec["containers"]:
            limit = math.ceil(cores(c["resources"]["limits"]["cpu"]))
            counts = {n: _thread_count(objects, c, n) for n in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
            assert all(1 <= v <= limit for v in counts.values()), (owner, counts, limit)
            if owner in SERVING:  # one thread per request; the workers give the concurrency
                assert set(counts.values()) == {1}, (owner, counts)
            if owner in TRAINING:  # training uses every core it may, and no more
                assert counts["OMP_NUM_THREADS"] == counts["MKL_NUM_THREADS"] == limit, (owner, counts)
                assert counts["OPENBLAS_NUM_THREADS"] == 1  # implicit's ALS asks for it
            seen.add(owner)
    assert seen >= {*SERVING, *TRAINING}


def test_every_container_bounds_its_ephemeral_storage(objects):
    for owner, spec, _ in pod_templates(objects):
        limits = []
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            res = c["resources"]
            request, limit = res["requests"]["ephemeral-storage"], res["limits"]["ephemeral-storage"]
            assert byte_count(request) <= byte_count(limit), (owner, c["name"])
            if c in spec["containers"]:
                limits.append(byte_count(limit))
        # the pod is evicted past the sum of its containers' limits: its emptyDirs must fit below it
        empty = sum(byte_count(v["emptyDir"].get("sizeLimit", "0")) for v in spec["volumes"] if "emptyDir" in v)
        assert sum(limits) > empty, (owner, sum(limits), empty)


def test_every_pdb_lets_unhealthy_pods_be_evicted(objects):
    pdbs = by_kind(objects, "PodDisruptionBudget")
    assert set(pdbs) == set(SERVING)
    for name, pdb in pdbs.items():
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", name


# ---------------------------------------------------------------------------- training pods

def test_training_pods_are_not_evicted_for_consolidation_and_jobs_fail_fast_on_bad_input(objects):
    templates = {owner: (spec, meta) for owner, spec, meta in pod_templates(objects)}
    for owner in TRAINING:
        assert templates[owner][1]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false", owner
    jobs = {"train": by_kind(objects, "Job")["train"]["spec"],
            "retrain": by_kind(objects, "CronJob")["retrain"]["spec"]["jobTemplate"]["spec"]}
    for name, job in jobs.items():
        assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
        rules = job["podFailurePolicy"]["rules"]
        fail = [r for r in rules if r["action"] == "FailJob"]
        assert fail == [{"action": "FailJob", "onExitCodes": {"containerName": name, "operator": "In", "values": [2]}}]
        assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
        assert job["template"]["spec"]["containers"][0]["name"] == name
    # ... and no serving pod carries the annotation: they may be moved
    for owner in SERVING:
        assert "cluster-autoscaler.kubernetes.io/safe-to-evict" not in templates[owner][1].get("annotations", {})


def test_exit_code_2_means_bad_input_for_the_training_entrypoint(tmp_path, monkeypatch):
    """What the FailJob rule relies on: no dataset (and no permission to generate one), or a dataset
    that breaks the input contract, exits 2; retrying would fail the same way."""
    for key in ("PMIS_GENERATE_IF_EMPTY", "PMIS_DATABASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PMIS_HOME", str(tmp_path))
    assert entrypoint.main(["train"]) == 2
    from services.cli import main as pmis

    (tmp_path / "data").mkdir()
    assert pmis(["train", "--data", str(tmp_path / "data"), "--bundles", str(tmp_path / "bundles"),
                 "--runs", str(tmp_path / "runs"), "--quiet"]) == 2


# ---------------------------------------------------------------------------- placement and network

def test_serving_pods_spread_over_nodes_and_zones(objects):
    deployments = by_kind(objects, "Deployment")
    for name in SERVING:
        pod = deployments[name]["spec"]["template"]
        spread = {c["topologyKey"]: c for c in pod["spec"]["topologySpreadConstraints"]}
        assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, name
        for c in spread.values():
            assert c["whenUnsatisfiable"] == "ScheduleAnyway" and c["maxSkew"] == 1, name
            assert selects(c["labelSelector"], pod["metadata"]["labels"]), name


def test_trainer_is_reachable_only_from_operators_and_training_pods(objects):
    policies = by_kind(objects, "NetworkPolicy")
    pods = {owner: meta["labels"] for owner, _, meta in pod_templates(objects)}
    rules = [rule for p in policies.values()
             if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], pods["trainer"])
             for rule in p["spec"].get("ingress", []) if any(port["port"] == "grpc" for port in rule.get("ports", []))]
    sources = [src for rule in rules for src in rule.get("from", [{"everyone": True}])]
    namespaces = [s for s in sources if "namespaceSelector" in s]
    same_namespace = [s for s in sources if set(s) == {"podSelector"}]
    assert len(namespaces) + len(same_namespace) == len(sources)
    assert namespaces == [{"namespaceSelector": {"matchLabels": {"pmis.io/operators": "true"}}}]
    admitted = {owner for owner, labels in pods.items() if any(selects(s["podSelector"], labels) for s in same_namespace)}
    assert admitted == {"train", "retrain"}
