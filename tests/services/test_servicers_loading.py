"""The component servicers before and after a load: UNAVAILABLE until loaded, ModelInfo, Reload."""

from __future__ import annotations

import hashlib
import json
import shutil

import grpc
import pytest

from models.bundle.registry import Registry
from pmis.v1 import common_pb2, ranker_pb2, success_pb2
from tests.support.servicers import (COMPONENTS, Harness, admin_token, bad_fields, fails, loaded,  # noqa: F401 - fixtures
                                     profile, server_config)


@pytest.fixture()
def fresh(small_system):
    """A harness of a servicer not loaded yet (this test's own), closed after the test."""
    made = []

    def make(component: str) -> Harness:
        module, _, _ = COMPONENTS[component]
        made.append(Harness(component, module.make_servicer(server_config(component, small_system.bundles))))
        return made[-1]
    yield make
    for harness in made:
        harness.close()


@pytest.fixture(scope="module")
def registry(small_system) -> Registry:
    return Registry(small_system.bundles / "registry.db")


# --------------------------------------------------------------------------- before load


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_unavailable_until_loaded(fresh, component):
    h = fresh(component)
    request = {
        "content": ("Retrieve", common_pb2.RetrieveRequest(profile=profile(), n=5)),
        "collaborative": ("Retrieve", common_pb2.RetrieveRequest(student_id="S0000001", n=5)),
        "success": ("Predict", success_pb2.PredictRequest(profile=profile(), internship_ids=["I000001"])),
        "ranker": ("Rank", ranker_pb2.RankRequest(profile=profile(), candidates=[ranker_pb2.Candidate(
            internship_id="I000001")])),
    }[component]
    details, violations = fails(h, *request, grpc.StatusCode.UNAVAILABLE)
    assert "not loaded" in details and violations == []
    # ...and a load makes the same servicer answer
    h.servicer.slot.load()
    assert h.ok(*request).model.component == component


# ModelAdmin (ModelInfo, Reload) comes after the generated base class in every servicer's bases,
# so the generated "Method not implemented!" stubs shadow it: both RPCs answer UNIMPLEMENTED.

@pytest.mark.parametrize("component", list(COMPONENTS))
def test_model_info_unavailable_until_loaded(fresh, component):
    h = fresh(component)
    details, _ = fails(h, "ModelInfo", common_pb2.ModelInfoRequest(), grpc.StatusCode.UNAVAILABLE)
    assert "not loaded" in details
    h.servicer.slot.load()
    assert h.ok("ModelInfo", common_pb2.ModelInfoRequest()).component == component


# --------------------------------------------------------------------------- ModelInfo and Reload


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_model_info_matches_registry(loaded, registry, component):
    info = loaded[component].ok("ModelInfo", common_pb2.ModelInfoRequest())
    row = registry.resolve(component, "champion")
    assert info.component == component
    assert info.version == row["version"]
    assert info.content_hash == row["content_hash"] and len(info.content_hash) == 64
    assert info.data_version == (row["data_version"] or "")
    assert info.run_id == (row["run_id"] or "")
    assert info.loaded_at.seconds > 0


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_reload(loaded, registry, small_system, component, tmp_path):
    h = loaded[component]
    before = h.ok("ModelInfo", common_pb2.ModelInfoRequest())
    resp = h.ok("Reload", common_pb2.ReloadRequest(version=1))
    row = registry.get(component, 1)
    assert resp.previous.content_hash == before.content_hash and resp.previous.version == before.version
    assert resp.current.component == component and resp.current.version == 1
    assert resp.current.content_hash == row["content_hash"]
    assert resp.current.loaded_at.ToNanoseconds() >= resp.previous.loaded_at.ToNanoseconds()
    assert h.ok("ModelInfo", common_pb2.ModelInfoRequest()).loaded_at == resp.current.loaded_at

    # by alias, and by folder
    assert h.ok("Reload", common_pb2.ReloadRequest(alias="champion")).current.version == row["version"]
    assert h.ok("Reload", common_pb2.ReloadRequest(path=str(row["path"]))).current.content_hash == row["content_hash"]

    # a version, alias or folder that does not exist: FAILED_PRECONDITION, and the old model keeps serving
    for bad in (common_pb2.ReloadRequest(version=9999), common_pb2.ReloadRequest(alias="no-such-alias"),
                common_pb2.ReloadRequest(path=str(small_system.root / "no-such-bundle"))):
        fails(h, "Reload", bad, grpc.StatusCode.FAILED_PRECONDITION)
    assert h.ok("ModelInfo", common_pb2.ModelInfoRequest()).content_hash == row["content_hash"]

    # a copy whose payload was changed and whose manifest hash was rewritten to match: the
    # signature no longer checks, the copy is refused naming why, the old model keeps serving
    tampered = tmp_path / "tampered"
    shutil.copytree(row["path"], tampered)
    victim = next(f for f in sorted(tampered.iterdir()) if f.name != "manifest.json")
    victim.write_bytes(victim.read_bytes() + b"\0")
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["files"][victim.name].update(sha256=hashlib.sha256(victim.read_bytes()).hexdigest(),
                                          bytes=victim.stat().st_size)
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    details, _ = fails(h, "Reload", common_pb2.ReloadRequest(path=str(tampered)), grpc.StatusCode.FAILED_PRECONDITION)
    assert "bundle refused" in details and "signature mismatch" in details
    assert h.ok("ModelInfo", common_pb2.ModelInfoRequest()).content_hash == row["content_hash"]

    # another component's bundle is refused
    other = next(c for c in COMPONENTS if c != component)
    details, _ = fails(h, "Reload", common_pb2.ReloadRequest(path=str(registry.get(other, 1)["path"])),
                       grpc.StatusCode.FAILED_PRECONDITION)
    assert other in details

    # no target / a version below 1: INVALID_ARGUMENT naming the field
    assert bad_fields(h, "Reload", common_pb2.ReloadRequest()) == {"target"}
    assert bad_fields(h, "Reload", common_pb2.ReloadRequest(version=0)) == {"version"}
