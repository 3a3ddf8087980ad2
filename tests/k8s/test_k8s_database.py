"""The shared catalog on PostgreSQL in the manifests (k8s/components/postgres): prod's gateways
read one database from a Secret and keep no per-pod catalog copy; dev keeps the SQLite copy."""

from __future__ import annotations

from tests.support.k8s import by_kind, needs_kubectl, rendered

pytestmark = needs_kubectl


def _gateway(target: str) -> dict:
    return by_kind(rendered(target), "Deployment")["gateway"]["spec"]["template"]["spec"]


def test_prod_gateways_share_the_database_from_a_secret_and_copy_no_catalog():
    spec = _gateway("overlays/prod")
    container = spec["containers"][0]
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["PMIS_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "pmis-database", "key": "url"}
    assert not spec.get("initContainers")
    assert {v["name"] for v in spec["volumes"]} == {"tmp"}
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    job = by_kind(rendered("overlays/prod"), "Job")["pmis-db-migrate"]
    migrate = job["spec"]["template"]["spec"]["containers"][0]
    assert migrate["args"] == ["pmis", "db", "migrate"]
    assert migrate["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "pmis-database"
    assert "pmis-database" not in by_kind(rendered("overlays/prod"), "Secret")  # created by the operator
    objs = rendered("overlays/prod")
    train = by_kind(objs, "Job")["train"]["spec"]["template"]["spec"]["containers"][0]
    retrain = by_kind(objs, "CronJob")["retrain"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    for container in (train, retrain):  # the entrypoint exports a snapshot first when this is set
        env = {e["name"]: e for e in container["env"]}
        assert env["PMIS_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "pmis-database"
        assert "PMIS_BUNDLE_SIGNING_KEY_FILE" in env  # the base's env is kept
    deployments = by_kind(objs, "Deployment")
    for name in ("content", "collaborative", "success", "ranker", "trainer"):  # the registry is there too
        env = {e["name"]: e for e in deployments[name]["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["PMIS_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "pmis-database", "key": "url"}


def test_dev_keeps_the_single_node_sqlite_copy():
    spec = _gateway("overlays/dev")
    assert [c["name"] for c in spec["initContainers"]] == ["catalog"]
    assert "PMIS_DATABASE_URL" not in {e["name"] for e in spec["containers"][0].get("env", [])}
