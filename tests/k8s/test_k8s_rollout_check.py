"""k8s/rollout_check.py: a change of bundle pins moves the versions of one training run, and the
ranker alone and last; checked on synthetic pin sets, on the overlays as rendered, and against git."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.support.k8s import KUBECTL, ROOT, copy_k8s, load_module, target_objects, validate

rollout_check = load_module("k8s_rollout_check", ROOT / "k8s" / "rollout_check.py")
Pin = rollout_check.Pin

R1, R2, R3 = "20261201T021500Z-aaaa1111", "20261208T021500Z-bbbb2222", "20261215T021500Z-cccc3333"


def pins(**versions) -> dict:
    """content=(2, R2), ... -> {deployment: Pin}; a name with a suffix (content_canary) is that component's."""
    out = {}
    for name, (version, run) in versions.items():
        deployment = name.replace("_", "-")
        out[deployment] = Pin(deployment, name.split("_")[0], str(version), run)
    return out


ALL_R1 = dict(content=(1, R1), collaborative=(1, R1), success=(1, R1), ranker=(1, R1))


def test_no_change_is_ok():
    assert rollout_check.check(pins(**ALL_R1), pins(**ALL_R1)) == []


def test_the_non_ranker_versions_of_one_run_may_move_together_or_one_by_one():
    one_run = pins(**{**ALL_R1, "content": (2, R2), "collaborative": (2, R2), "success": (2, R2)})
    assert rollout_check.check(pins(**ALL_R1), one_run) == []
    assert rollout_check.check(pins(**ALL_R1), pins(**{**ALL_R1, "content": (2, R2)})) == []


def test_the_ranker_alone_once_the_others_serve_its_run():
    others_on_r2 = {**ALL_R1, "content": (2, R2), "collaborative": (2, R2), "success": (2, R2)}
    assert rollout_check.check(pins(**others_on_r2), pins(**{**others_on_r2, "ranker": (2, R2)})) == []


def test_the_ranker_together_with_another_component_is_refused():
    errors = rollout_check.check(pins(**ALL_R1), pins(**{**ALL_R1, "content": (2, R2), "ranker": (2, R2)}))
    assert len(errors) == 1 and "ranker" in errors[0] and "content" in errors[0] and "change of its own" in errors[0]


def test_pins_of_two_runs_in_one_change_are_refused():
    errors = rollout_check.check(pins(**ALL_R1), pins(**{**ALL_R1, "content": (2, R2), "collaborative": (3, R3)}))
    assert len(errors) == 1 and "different training runs" in errors[0] and R2 in errors[0] and R3 in errors[0]


def test_the_ranker_ahead_of_the_others_is_refused_but_may_go_back_first():
    ahead = rollout_check.check(pins(**ALL_R1), pins(**{**ALL_R1, "ranker": (2, R2)}))
    assert len(ahead) == 1 and "goes last" in ahead[0] and "content v1" in ahead[0]
    all_r2 = dict(content=(2, R2), collaborative=(2, R2), success=(2, R2), ranker=(2, R2))
    assert rollout_check.check(pins(**all_r2), pins(**{**all_r2, "ranker": (1, R1)})) == []  # rollback: ranker first


def test_every_pin_names_its_run_and_relabelling_is_not_a_move():
    missing = rollout_check.check(pins(**ALL_R1), pins(**{**ALL_R1, "success": (2, None)}))
    assert any("no pmis.io/training-run" in e and "success" in e for e in missing)
    assert any("not 'x'" in e for e in rollout_check.check(pins(**ALL_R1), pins(**{**ALL_R1, "content": ("x", R1)})))
    # the first run's placeholder replaced by its real id on every component, ranker included: no version moved
    placeholder = {name: (1, "first-training") for name in ALL_R1}
    assert rollout_check.check(pins(**placeholder), pins(**ALL_R1)) == []


def test_a_canary_is_a_pin_of_its_component():
    with_canary = pins(**{**ALL_R1, "content_canary": (2, R2)})
    assert with_canary["content-canary"].component == "content"
    assert rollout_check.check(pins(**ALL_R1), with_canary) == []
    # the ranker cannot move while the canary (or anything else) serves another run than the ranker's new one
    errors = rollout_check.check(with_canary, {**with_canary, **pins(ranker=(2, R2))})
    assert errors and "content v1" in errors[0]


@pytest.mark.parametrize("target", validate.TARGETS)
def test_every_rendered_pin_names_its_run(target):
    objs = target_objects(target)
    found = rollout_check.pins(objs)
    assert set(found) == {"content", "collaborative", "success", "ranker"}
    assert all(p.run and p.version == "1" and p.component == p.deployment for p in found.values())
    assert rollout_check.check(objs, objs) == []


def test_the_overlays_bundle_versions_files_carry_version_and_run():
    for overlay in ("dev", "prod"):
        docs = validate.load_documents(validate.K8S_DIR / "overlays" / overlay / "bundle-versions.yaml")
        assert {p.deployment: (p.version, p.run) for p in rollout_check.pins(docs).values()} == \
            {c: ("1", "first-training") for c in ("content", "collaborative", "success", "ranker")}


# ---------------------------------------------------------------------------- against git

def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   check=True, capture_output=True)


def _pin(work, overlay: str, component: str, version: str, run: str):
    path = work / "overlays" / overlay / "bundle-versions.yaml"
    docs = validate.load_documents(path)
    doc = next(d for d in docs if d["metadata"]["name"] == component)
    doc["spec"]["template"]["metadata"]["annotations"]["pmis.io/training-run"] = run
    doc["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = version
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


@pytest.fixture
def repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("no git")
    work = copy_k8s(tmp_path / "repo")
    _git(tmp_path / "repo", "init", "-q")
    _git(tmp_path / "repo", "add", "-A")
    _git(tmp_path / "repo", "commit", "-q", "-m", "pins")
    return work


@pytest.mark.parametrize("rendering", [True, False], ids=["rendered", "bundle-versions"])
def test_the_working_tree_is_compared_with_git(repo, rendering):
    if rendering and KUBECTL is None:
        pytest.skip("no kubectl: only bundle-versions.yaml is compared")
    kubectl = KUBECTL if rendering else None
    lines = []
    assert rollout_check.run(repo, "HEAD", kubectl=kubectl, out=lines.append) == 0
    assert lines[-1].startswith("rollout pins: OK against HEAD") and "no pin moved" in lines[-1]
    _pin(repo, "prod", "content", "2", R2)
    _pin(repo, "prod", "collaborative", "2", R2)
    lines.clear()
    assert rollout_check.run(repo, "HEAD", kubectl=kubectl, out=lines.append) == 0
    assert "overlays/prod: collaborative v1 -> v2 (run %s), content v1 -> v2 (run %s)" % (R2, R2) in lines[-1]
    _pin(repo, "prod", "ranker", "2", R2)
    lines.clear()
    assert rollout_check.run(repo, "HEAD", kubectl=kubectl, out=lines.append) == 1
    assert any(line.startswith("ROLLOUT REFUSED overlays/prod:") and "change of its own" in line for line in lines)
    assert lines[-1].startswith("rollout pins: REFUSED")


def test_missing_git_history_or_an_explicit_skip_does_not_fail(tmp_path, monkeypatch):
    work = copy_k8s(tmp_path)  # not a git work tree
    lines = []
    assert rollout_check.run(work, None, kubectl=None, out=lines.append) == 0
    assert "SKIPPED" in lines[-1]
    monkeypatch.setenv("PMIS_ROLLOUT_CHECK", "skip")
    assert rollout_check.run(validate.K8S_DIR, None, kubectl=None, out=lines.append) == 0
    assert lines[-1] == "rollout pins: SKIPPED (PMIS_ROLLOUT_CHECK=skip)"

