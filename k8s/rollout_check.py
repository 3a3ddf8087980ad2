"""The rollout rules of the bundle pins, checked offline against git (run by `make k8s-validate`).

Each component Deployment pins the bundle version it serves (`PMIS_BUNDLE_VERSION`, set per overlay
in bundle-versions.yaml) and names, beside it, the training run that produced that version (pod
template annotation `pmis.io/training-run`; `pmis models list` prints "run <id>" per version).
The registry records the run of every version, but this check runs where there is no registry
(CI, a laptop), so the run travels with the pin. A change of pins is refused when:

  (a) the pins it moves come from more than one training run: the components of one run agree
      with each other (the ranker learned from its own run's component scores), so a change rolls
      out one run's versions;
  (b) it moves the ranker's pin together with any other component's: the ranker rolls last, in a
      change of its own, once content, collaborative and success serve its run;
  (c) it moves the ranker forward to a run that another pinned component does not serve yet (what
      "last" means). Moving the ranker back to an earlier version (a rollback starts with the
      ranker) is always allowed.

A pin "moves" when its version changes or its Deployment is new (a canary). Every pin must carry its
run. Relabelling a pin (same version, another run: e.g. replacing `first-training` with the real id)
is not a move.

    .venv/bin/python k8s/rollout_check.py [--base REF] [--k8s DIR]

compares each overlay (dev, prod) of the working tree with the same overlay at REF: `--base`, else
$PMIS_ROLLOUT_BASE, else origin/main when it exists, else HEAD. Both sides are rendered with
`kubectl kustomize` (so pins added by components, such as a canary, count); without kubectl the
overlays' bundle-versions.yaml files are compared. Not a git work tree, or REF without k8s/: skipped
with a message. PMIS_ROLLOUT_CHECK=skip skips it deliberately (e.g. a run that did not train every
component, which rule (c) would otherwise hold back).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts beside this one
import validate  # noqa: E402  (rendering, kubectl discovery)


K8S_DIR = Path(__file__).resolve().parent
OVERLAYS = ["overlays/dev", "overlays/prod"]
VERSION_ENV = "PMIS_BUNDLE_VERSION"
RUN_ANNOTATION = "pmis.io/training-run"
COMPONENT_LABEL = "app.kubernetes.io/component"
RANKER = "ranker"


@dataclass(frozen=True)
class Pin:
    deployment: str
    component: str
    version: str | None
    run: str | None

    def __str__(self) -> str:
        return f"{self.deployment} v{self.version} (run {self.run or '?'})"


def pins(objects: Iterable[dict]) -> dict[str, Pin]:
    """The pins of a list of objects (rendered, or the patches of bundle-versions.yaml): every
    Deployment with PMIS_BUNDLE_VERSION in a container's env, by Deployment name."""
    out = {}
    for o in objects:
        if not o or o.get("kind") != "Deployment":
            continue
        template = o.get("spec", {}).get("template", {})
        versions = [e.get("value") for c in template.get("spec", {}).get("containers", [])
                    for e in c.get("env", []) if e.get("name") == VERSION_ENV]
        if not versions:
            continue
        meta, tmeta = o.get("metadata", {}), template.get("metadata", {})
        name = meta["name"]
        component = (tmeta.get("labels", {}).get(COMPONENT_LABEL) or meta.get("labels", {}).get(COMPONENT_LABEL)
                     or name)
        out[name] = Pin(name, component, versions[0], (tmeta.get("annotations") or {}).get(RUN_ANNOTATION))
    return out


def _as_pins(x) -> dict[str, Pin]:
    if isinstance(x, Mapping):
        return dict(x)
    return pins(x)


def _older(new: Pin, old: Pin | None) -> bool:
    try:
        return old is not None and int(new.version) < int(old.version)
    except (TypeError, ValueError):
        return False


def check(before, after) -> list[str]:
    """Why the change from `before` to `after` (pins, or objects to read them from) must not be
    applied; empty: it may."""
    before, after = _as_pins(before), _as_pins(after)
    errors = []
    for p in after.values():
        if not (p.version or "").isdigit() or int(p.version) < 1:
            errors.append(f"{p.deployment}: {VERSION_ENV} must be a registry version (1, 2, ...), not {p.version!r}")
        if not p.run:
            errors.append(f"{p.deployment}: no {RUN_ANNOTATION} annotation on the pod template beside "
                          f"{VERSION_ENV}={p.version} (`pmis models list` prints the run of every version)")
    moved = [p for _, p in _moved(before, after)]
    if not moved:
        return errors
    runs = sorted({p.run or "?" for p in moved})
    if len(runs) > 1:
        errors.append("pins from different training runs in one change: " + ", ".join(map(str, moved))
                      + ". Roll out the versions of one run per change (README, \"Version skew\").")
    rankers = [p for p in moved if p.component == RANKER]
    others = [p for p in moved if p.component != RANKER]
    if rankers and others:
        errors.append(f"the ranker's pin moves together with {', '.join(p.deployment for p in others)}: the ranker "
                      f"rolls out last, in a change of its own, once the other components serve its run.")
    elif rankers:
        for r in rankers:
            if _older(r, before.get(r.deployment)):
                continue  # a rollback starts with the ranker
            behind = [p for p in after.values() if p.component != RANKER and p.run != r.run]
            if behind:
                errors.append(f"{r} moves ahead of {', '.join(map(str, behind))}: roll out their versions of "
                              f"run {r.run} first; the ranker goes last.")
    return errors


def _moved(before: dict[str, Pin], after: dict[str, Pin]) -> list[tuple[str, Pin]]:
    """(Deployment, new pin) of every pin whose version changed or whose Deployment is new."""
    return [(name, p) for name, p in sorted(after.items()) if name not in before or before[name].version != p.version]


def describe(before, after) -> str:
    before, after = _as_pins(before), _as_pins(after)
    moved = [f"{name} {f'v{before[name].version} -> ' if name in before else 'new, '}v{p.version} (run {p.run})"
             for name, p in _moved(before, after)]
    return ", ".join(moved) or "no pin moved"


# ---------------------------------------------------------------------------- against git

def _git(cwd: Path, *args: str, binary: bool = False):
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=not binary, timeout=120)


def default_base(cwd: Path) -> str:
    for ref in (os.environ.get("PMIS_ROLLOUT_BASE"), "origin/main"):
        if ref and _git(cwd, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode == 0:
            return ref
    return "HEAD"


def overlay_objects(k8s_dir: Path, overlay: str, kubectl: str | None) -> list[dict]:
    if kubectl is not None:
        return validate.render(overlay, kubectl, k8s_dir)
    path = k8s_dir / overlay / "bundle-versions.yaml"
    return validate.load_documents(path) if path.exists() else []


def run(k8s_dir: Path = K8S_DIR, base: str | None = None, overlays=OVERLAYS, kubectl: str | None = None,
        out=print) -> int:
    """Compare every overlay of `k8s_dir` with the same overlay at git ref `base`; print the
    verdict; 1 if a change of pins is refused."""
    if os.environ.get("PMIS_ROLLOUT_CHECK", "").lower() == "skip":
        out("rollout pins: SKIPPED (PMIS_ROLLOUT_CHECK=skip)")
        return 0
    try:
        top = _git(k8s_dir, "rev-parse", "--show-toplevel")
    except (OSError, subprocess.TimeoutExpired) as e:
        out(f"rollout pins: SKIPPED (no git: {e})")
        return 0
    if top.returncode != 0:
        out("rollout pins: SKIPPED (not a git work tree)")
        return 0
    base = base or default_base(k8s_dir)
    if _git(k8s_dir, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}").returncode != 0:
        out(f"rollout pins: FAILED (no commit {base!r} to compare with)")
        return 1
    root = Path(top.stdout.strip()).resolve()
    prefix = k8s_dir.resolve().relative_to(root).as_posix()
    archive = _git(root, "archive", "--format=tar", base, "--", prefix, binary=True)
    if archive.returncode != 0:
        why = archive.stderr.decode(errors="replace").strip().splitlines()
        out(f"rollout pins: SKIPPED (nothing to compare with: no {prefix}/ at {base}; {why[-1] if why else ''})")
        return 0
    failed, verdicts = False, []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        old_dir = Path(tmp) / prefix
        for overlay in overlays:
            if not (old_dir / overlay).is_dir():
                verdicts.append(f"{overlay}: new at {base}")
                continue
            try:
                before = overlay_objects(old_dir, overlay, kubectl)
            except RuntimeError as e:  # the base's own manifests do not render: nothing to compare with
                verdicts.append(f"{overlay}: not compared ({base} does not render: {str(e).splitlines()[0]})")
                continue
            after = overlay_objects(k8s_dir, overlay, kubectl)
            errors = check(before, after)
            for e in errors:
                out(f"ROLLOUT REFUSED {overlay}: {e}")
            failed |= bool(errors)
            verdicts.append(f"{overlay}: {describe(before, after)}")
    source = "rendered" if kubectl else "bundle-versions.yaml"
    out(f"rollout pins: {'REFUSED' if failed else 'OK'} against {base}, {source} ({'; '.join(verdicts)})")
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="refuse a change of bundle pins that breaks the rollout rules")
    p.add_argument("--base", help="git ref to compare with (default: $PMIS_ROLLOUT_BASE, origin/main, HEAD)")
    p.add_argument("--k8s", type=Path, default=K8S_DIR, help="the k8s/ directory of a git work tree")
    a = p.parse_args(argv)
    return run(a.k8s.resolve(), a.base, kubectl=validate.find_kubectl())


if __name__ == "__main__":
    sys.exit(main())
