"""What is evaluated is what is served: the gateway's top-k equals the offline pipeline's top-k.

The gateway answers over gRPC from the four component servers; the evaluation runs the same
stages (models.pipeline, models.training.evaluate.candidate_block) in process on the same champion
bundles and the same catalogue state. Fairness is off (it keeps a ledger across requests).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.filters import allowed
from models.bundle.reading import load_bundle
from models.data.contract import load_dataset
from models.training.evaluate import _pipeline_top_k, candidate_block, pipeline_scores
from models.training.holdout import components_from_bundles, load_champions
from models.pipeline import open_items
from models.components.features import FeatureSpace
from models.components.ranker import RankerModel
from models.bundle.registry import Registry
from tests.support.loopback import Components as Servers
from tests.support.loopback import GatewayRunner
from tests.support.systems import copy_bundles

K = 10


@pytest.fixture(scope="module", params=["ranker", "blend"])
def served(request, small_system, tmp_path_factory):
    """The system as trained (the learned ranker serves the rank stage), and the same system whose
    ranker bundle serves the blend, as training ships it when the learned ranker does not earn its
    place."""
    bundles = small_system.bundles
    if request.param == "blend":
        bundles = blend_champion(small_system.bundles, tmp_path_factory.mktemp("blend") / "bundles")
    servers = Servers(bundles)
    runner = None
    try:
        runner = GatewayRunner(servers.targets, small_system.catalog, fairness_strength=0.0)
        yield request.param, bundles, runner
    finally:
        if runner is not None:
            runner.close()
        servers.stop()


def blend_champion(src: Path, dest: Path) -> Path:
    """A copy of `src` whose champion ranker bundle serves the blend beside the same trees."""
    copy_bundles(src, dest)
    registry = Registry(dest / "registry.db")
    ranker = RankerModel.from_bundle(load_bundle(Path(registry.resolve("ranker", "champion")["path"])))
    ranker.ranking = "blend"
    ref = ranker.save(dest, {"data_version": "test"}, FeatureSpace.from_arrays(
        load_bundle(Path(registry.resolve("ranker", "champion")["path"])).arrays).arrays())
    registry.register_many([(ref, {})], alias="champion", reason="test: the blend serves the rank stage")
    return dest


def _offline(small_system, bundles_dir, gateway, rows_known, rows_cold):
    """The evaluation's top-k for students (by dataset row); `rows_cold` as profile-only students."""
    ds = load_dataset(small_system.data)
    bundles = load_champions(bundles_dir)
    table = gateway.catalog.internships
    now = gateway.now()
    comp = components_from_bundles(bundles, ds)
    # the catalogue state the gateway serves from: open at `now`, not full
    order = np.array([table.position[i] for i in comp.space.items.ids.tolist()])
    comp.open_items = open_items(comp.space.items.deadline, now)
    comp.available = allowed(table, order, now=now, applied=set(), filters=None, student_lat=None, student_lon=None)
    # profile-only students: nothing seen, nothing to fold in
    cold = np.zeros(comp.seen.shape[0], dtype=bool)
    cold[rows_cold] = True
    keep = np.where(cold, 0.0, 1.0)
    comp.seen = _rows_kept(comp.seen, keep)
    comp.collaborative.user_items = _rows_kept(comp.collaborative.user_items, keep)
    rows = np.concatenate([rows_known, rows_cold])
    block = candidate_block(comp, rows, gateway.cfg.candidates)
    ranker = RankerModel.from_bundle(bundles["ranker"])
    scores = pipeline_scores(block, ranker.blend_weights, ranker)["ranker"]
    top, valid = _pipeline_top_k(block, scores, K)
    ids = comp.space.items.ids
    return {int(r): [str(ids[p]) for p, v in zip(top[i], valid[i]) if v] for i, r in enumerate(rows)}, \
        {int(r): np.sort(scores[i][block.valid[i]])[::-1][:K] for i, r in enumerate(rows)}, ds


def _rows_kept(m, keep):
    out = m.multiply(keep[:, None]).tocsr()
    out.eliminate_zeros()
    return out


def test_gateway_top_k_equals_offline_top_k(small_system, served):
    from services.common.profiles import profile_message

    ranking, bundles_dir, served = served
    gateway = served.gateway
    ds = load_dataset(small_system.data)
    student_ids = ds.students["student_id"].astype(str).tolist()
    with_history = set(ds.interactions["student_id"].astype(str))
    rng = np.random.default_rng(3)
    known = [r for r in rng.permutation(len(student_ids)) if student_ids[r] in with_history][:12]
    cold = [r for r in rng.permutation(len(student_ids)) if r not in known][:6]
    expected, expected_scores, _ = _offline(small_system, bundles_dir, gateway, np.array(known), np.array(cold))
    compared = 0
    for r in known + cold:
        sid = student_ids[r]
        if r in cold:
            resp = served.recommend(profile=profile_message(gateway.catalog.student(sid)), k=K, explain=False)
            assert resp.cold_start
        else:
            resp = served.recommend(student_id=sid, k=K, explain=False)
        assert resp.ranking == ranking and not resp.degraded and resp.fairness == "off (policy)"
        got = [it.internship_id for it in resp.items]
        assert got == expected[r], f"student {sid} ({'profile only' if r in cold else 'with history'})"
        np.testing.assert_allclose([it.score for it in resp.items], expected_scores[r], rtol=0, atol=1e-5)
        compared += len(got)
    assert compared >= 0.9 * K * (len(known) + len(cold))


def test_explanations_follow_the_rank_stage(served):
    """Each answer's contributions split the score of what ranked it: the learned ranker's
    features, or the blend's terms when the blend serves the rank stage (no second Rank call)."""
    ranking, _, served = served
    resp = served.recommend(student_id="S0000001", k=5)
    assert resp.ranking == ranking and not resp.degraded
    for it in resp.items:
        assert it.explanation.reasons and it.explanation.contributions
        assert it.scores.HasField("ranker") == (ranking == "ranker")
