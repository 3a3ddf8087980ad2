"""Registered versions through the trainer: listed, detailed (plots, feature importance, history),
compared on their evaluation windows, activated (never a tampered bundle) and rolled back, with a
watching component server following the champion alias; the activation rule and auto-activation.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from models.bundle.writing import write_bundle
from models.bundle.registry import Registry
from models.training import diagnostics
from tests.support.trainer import AUTH, T, code_of, content_version, served, violations_of
from tests.support.waiting import wait_until


def test_list_get_compare_activate_rollback(trainer, content_server):
    stub, system = trainer.stub, trainer.system
    champion = stub.GetModel(T.GetModelRequest(component="content"), timeout=10).summary.version
    extra = content_version(system, "compare-test")
    listed = stub.ListModels(T.ListModelsRequest(component="content", page_size=1), timeout=10)
    assert [m.version for m in listed.models] == [extra] and listed.next_page_token
    rest = stub.ListModels(T.ListModelsRequest(component="content", page_size=1, page_token=listed.next_page_token),
                           timeout=10)
    assert rest.models[0].version < extra
    active = stub.ListModels(T.ListModelsRequest(component="content", active_only=True), timeout=10)
    assert [m.version for m in active.models] == [champion] and active.models[0].champion
    assert violations_of(lambda: stub.ListModels(T.ListModelsRequest(component="content", page_token="garbage"),
                                                 timeout=10)) == {"page_token"}
    assert violations_of(lambda: stub.ListModels(T.ListModelsRequest(component="gateway"), timeout=10)) == {"component"}

    # plots of the champion's run, as paths and bytes; feature importance of the ranker
    detail = stub.GetModel(T.GetModelRequest(component="success", include_plot_bytes=True), timeout=10)
    plots = {p.name: p for p in detail.plots}
    assert {"reliability.png", "roc.png", "pr.png", "feature_importance_success.png"} <= set(plots)
    for p in plots.values():
        assert Path(p.path).is_file() and p.png.startswith(b"\x89PNG") and p.description
    assert detail.feature_importance and detail.manifest["component"] == "success"
    assert detail.summary.window.fingerprint and detail.summary.window.test_students > 0
    ranker = stub.GetModel(T.GetModelRequest(component="ranker"), timeout=10)
    assert {"feature_importance_ranker.png", "fairness_groups.png"} <= {p.name for p in ranker.plots}
    assert all(p.png == b"" for p in ranker.plots) and len(ranker.feature_importance) > 5
    assert code_of(lambda: stub.GetModel(T.GetModelRequest(component="content", version=999), timeout=10)) == \
        grpc.StatusCode.NOT_FOUND

    # the hand-made version records no evaluation window: not comparable, and said so
    cmp = stub.CompareModels(T.CompareModelsRequest(component="content", versions=[extra], include_champion=True),
                             timeout=10)
    assert [m.version for m in cmp.models] == [extra, champion]
    assert cmp.same_window is False and any("not recorded" in d for d in cmp.window_differences)
    ndcg = next(m for m in cmp.metrics if m.metric == "ndcg@10")
    assert set(ndcg.values) == {champion} and ndcg.direction == 1  # only the champion has test-window metrics
    assert code_of(lambda: stub.CompareModels(T.CompareModelsRequest(
        component="content", versions=[extra, champion], require_same_window=True), timeout=10)) == \
        grpc.StatusCode.FAILED_PRECONDITION
    assert violations_of(lambda: stub.CompareModels(T.CompareModelsRequest(component="content", versions=[extra]),
                                                    timeout=10)) == {"versions"}

    # activation moves the alias; the watching content server follows it; rollback moves it back
    change = stub.Activate(T.ActivateRequest(component="content", version=extra, reason="test"), metadata=AUTH,
                           timeout=30)
    assert (change.previous.version, change.current.version) == (champion, extra) and "PMIS_WATCH_SECONDS" in change.pickup
    wait_until(lambda: served(content_server) == extra, 30, f"the content server serving v{extra} after Activate")
    back = stub.Rollback(T.RollbackRequest(component="content"), metadata=AUTH, timeout=30)
    assert (back.previous.version, back.current.version) == (extra, champion)
    wait_until(lambda: served(content_server) == champion, 30, f"the content server serving v{champion} after Rollback")
    history = stub.GetModel(T.GetModelRequest(component="content"), timeout=10).champion_history
    assert [h.action for h in history][-2:] == ["set", "rollback"]

    # a version whose files were tampered with is never activated
    bad = content_version(system, "tampered")
    row = Registry(system.bundles / "registry.db").get("content", bad)
    victim = Path(row["path"]) / "item_stipend.npy"
    with open(victim, "ab") as f:
        f.write(b"\0")
    with pytest.raises(grpc.RpcError) as info:
        stub.Activate(T.ActivateRequest(component="content", version=bad), metadata=AUTH, timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and victim.name in info.value.details()
    assert Registry(system.bundles / "registry.db").resolve("content")["version"] == champion
    assert code_of(lambda: stub.Activate(T.ActivateRequest(component="content", version=999), metadata=AUTH,
                                         timeout=10)) == grpc.StatusCode.NOT_FOUND


def test_model_slot_follows_moves_of_its_alias_only(tiny_copy):
    """The registry watch reloads when the alias moves, not when someone pinned another version."""
    from services.common.server import ModelSlot, ServerConfig
    from services.content.runtime import ContentRuntime

    registry = Registry(tiny_copy.bundles / "registry.db")
    champion = registry.resolve("content")["version"]
    other = content_version(tiny_copy, "watch-test")
    cfg = ServerConfig("content", "127.0.0.1", 0, 0, tiny_copy.bundles, "champion", None, None, 0.5, 0.0, 1, 60_000,
                       watch=1.0)
    slot = ModelSlot("content", ContentRuntime.from_bundle, cfg)
    slot.load()
    assert slot.check_alias() is False and slot.get().bundle.ref.version == champion
    slot.load(version=other)  # a manual Reload to another version ...
    assert slot.check_alias() is False and slot.get().bundle.ref.version == other  # ... stays put
    slot.load(alias="champion")
    registry.set_alias("content", other, reason="watch test")
    try:
        assert slot.check_alias() is True and slot.get().bundle.ref.version == other
        assert slot.check_alias() is False
    finally:
        registry.rollback("content", reason="watch test done")
    assert slot.check_alias() is True and slot.get().bundle.ref.version == champion
    pinned = ModelSlot("content", ContentRuntime.from_bundle, ServerConfig(
        "content", "127.0.0.1", 0, 0, tiny_copy.bundles, "champion", champion, None, 0.5, 0.0, 1, 60_000, watch=1.0))
    assert pinned.watching is False


def test_decide_activation_rules():
    window = {"data_version": "d1", "train_until": 1, "valid_until": 2, "k": 10, "candidates": 100,
              "test_students": 50, "sample_seed": None}
    champion = {"version": 3, "metrics": {"ndcg@10": 0.30, "roc_auc": 0.80}}
    decide = diagnostics.decide_activation
    yes = decide("ranker", 4, {"ndcg@10": 0.32}, window, champion, dict(window), margin=0.01)
    assert yes["activate"] and "vs champion v3" in yes["reason"] and "gain +0.0200" in yes["reason"]
    no = decide("ranker", 4, {"ndcg@10": 0.305}, window, champion, dict(window), margin=0.01)
    assert not no["activate"] and "< margin" in no["reason"]
    other = decide("success", 4, {"roc_auc": 0.95}, window, champion, {**window, "data_version": "d0"}, margin=0.0)
    assert not other["activate"] and "different window" in other["reason"] and "data_version" in other["reason"]
    assert decide("content", 1, {"ndcg@10": 0.1}, window, None, None, margin=0.5)["activate"]
    assert diagnostics.direction("log_loss") == -1 and diagnostics.direction("students") == 0
    assert diagnostics.direction("ndcg@10") == 1


def test_auto_activate_moves_the_champion_only_on_the_same_window(tmp_path):
    from models.lifecycle.versions import auto_activate

    root = tmp_path / "bundles"
    registry = Registry(root / "registry.db")
    window = {"data_version": "d1", "train_until": 1, "valid_until": 2, "k": 10, "candidates": 100,
              "test_students": 50, "sample_seed": None}

    def version(ndcg: float, w: dict) -> int:
        ref = write_bundle(root, "ranker", documents={"n": ndcg}, metadata={
            "run_id": f"r{ndcg}", "evaluation_window": w, "metrics": {"ndcg@10": ndcg}})
        registry.register(ref)
        return ref.version

    first = version(0.30, window)
    (d,) = auto_activate(registry, "job-a", {"ranker": first}, 0.01, window)
    assert d["activate"] and d["reason"] == "no champion yet" and registry.resolve("ranker")["version"] == first
    better = version(0.35, window)
    (d,) = auto_activate(registry, "job-b", {"ranker": better}, 0.01, window)
    assert d["activate"] and registry.resolve("ranker")["version"] == better
    assert "auto-activated by job job-b" in registry.history("ranker")[-1]["reason"]
    marginal = version(0.355, window)
    (d,) = auto_activate(registry, "job-c", {"ranker": marginal}, 0.01, window)
    assert not d["activate"] and d["champion_version"] == better and registry.resolve("ranker")["version"] == better
    newer_data = {**window, "data_version": "d2"}
    elsewhere = version(0.9, newer_data)
    (d,) = auto_activate(registry, "job-d", {"ranker": elsewhere}, 0.0, newer_data)
    assert not d["activate"] and "different window" in d["reason"] and registry.resolve("ranker")["version"] == better
