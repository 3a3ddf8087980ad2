"""The served bundle's metrics: pmis_bundle_trained_timestamp_seconds carries the manifest's created_at
(the age the retraining trigger measures), which the monitoring component's alert on an old champion
reads (k8s/components/monitoring)."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
from prometheus_client import REGISTRY

from models.bundle.writing import write_bundle
from services.common import telemetry
from services.common.server import ModelSlot, ServerConfig


def trained(component: str) -> float | None:
    return REGISTRY.get_sample_value("pmis_bundle_trained_timestamp_seconds", {"component": component})


def test_a_loaded_bundle_reports_when_it_was_built(tmp_path, unsigned_bundles):
    ref = write_bundle(tmp_path, "content", arrays={"x": np.arange(3)}, metadata={"data_version": "d1"})
    cfg = ServerConfig("content", "127.0.0.1", 0, 0, tmp_path, "champion", None, ref.path, 0.5, 0.0, 1, 60_000)
    slot = ModelSlot("content", lambda bundle: None, cfg)
    before = datetime.now(timezone.utc).timestamp()
    _, loaded = slot.load()
    created = datetime.fromisoformat(loaded.bundle.manifest["created_at"].replace("Z", "+00:00")).timestamp()
    assert trained("content") == created
    assert before - 2 <= created <= datetime.now(timezone.utc).timestamp()  # seconds precision in the manifest
    assert REGISTRY.get_sample_value("pmis_bundle_info", {"component": "content", "version": str(ref.version),
                                                          "data_version": "d1",
                                                          "content_hash": ref.content_hash[:12]}) == 1


def test_a_bundle_without_a_readable_date_leaves_no_stale_age(tmp_path):
    ref = type("Ref", (), {"version": 7, "data_version": None, "content_hash": "ab" * 32})()
    telemetry.bundle_loaded("ranker", ref, "2026-01-02T03:04:05Z")
    assert trained("ranker") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()
    telemetry.bundle_loaded("ranker", ref, None)  # the previous bundle's age must not linger
    assert trained("ranker") is None
    telemetry.bundle_loaded("ranker", ref, "yesterday")  # unreadable: no metric, and the load goes on
    assert trained("ranker") is None
    assert REGISTRY.get_sample_value("pmis_bundle_version", {"component": "ranker"}) == 7
