"""Batch RPCs and the gateway's adaptive batching.

- `Batcher` (gateway/batching.py), pure asyncio: calls made together share one batch; no more
  than `max_outstanding` batches in flight, the rest wait and go out together; each caller gets
  its own answer or failure; an expired member does not hold up (or shorten) the others.
- The batch RPCs of the four components (services/common/batch.py), on loopback servers: a
  batch answers exactly as the same calls made one by one, and a bad request fails alone.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from prometheus_client import REGISTRY

from gateway.batching import Batcher
from gateway.fanout import BATCHED_METHODS
from pmis.v1 import common_pb2, ranker_pb2, success_pb2
from services.common.batch import MAX_BATCH
from tests.support.servicers import catalog_rows, loaded, profile  # noqa: F401 - fixtures: the servicers, the catalog's ids


class FakeComponent:
    """A batch RPC that answers each request with request * 10 after `delay`, remembering batches."""

    def __init__(self, delay: float = 0.01, fail: set = frozenset(), down: str | None = None):
        self.delay, self.fail, self.down = delay, fail, down
        self.batches, self.deadlines, self.in_flight, self.most_in_flight = [], [], 0, 0

    async def send(self, requests: list, deadline: float) -> list:
        self.batches.append(list(requests))
        self.deadlines.append(deadline)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if self.down:
            return [(None, self.down)] * len(requests)
        return [(None, "INVALID_ARGUMENT") if r in self.fail else (r * 10, None) for r in requests]


def run(coro):
    return asyncio.run(coro)


def test_calls_made_together_go_in_one_batch():
    async def main():
        fake = FakeComponent()
        b = Batcher(fake.send, max_outstanding=1, max_batch=32)
        deadline = time.monotonic() + 1
        answers = await asyncio.gather(*(b.call(i, deadline) for i in range(5)))
        return fake, b, answers

    fake, b, answers = run(main())
    assert answers == [(i * 10, None) for i in range(5)]
    assert fake.batches == [[0, 1, 2, 3, 4]] and b.outstanding == 0


def test_a_lone_call_goes_at_once():
    async def main():
        fake = FakeComponent(delay=0.0)
        b = Batcher(fake.send, max_outstanding=1)
        started = time.monotonic()
        answer = await b.call(7, time.monotonic() + 1)
        return answer, time.monotonic() - started, fake

    answer, took, fake = run(main())
    assert answer == (70, None) and fake.batches == [[7]]
    assert took < 0.05  # no timer: nothing waits for company


def test_calls_wait_while_the_outstanding_batches_are_in_flight_then_go_together():
    async def main():
        fake = FakeComponent(delay=0.05)
        b = Batcher(fake.send, max_outstanding=2, max_batch=32)
        deadline = time.monotonic() + 2
        first = [asyncio.ensure_future(b.call(i, deadline)) for i in (0, 1)]
        await asyncio.sleep(0)                       # batch [0, 1] leaves
        second = [asyncio.ensure_future(b.call(i, deadline)) for i in (2,)]
        await asyncio.sleep(0.01)                    # batch [2] leaves: two in flight now
        rest = [asyncio.ensure_future(b.call(i, deadline)) for i in range(3, 9)]  # must wait
        answers = await asyncio.gather(*first, *second, *rest)
        return fake, answers

    fake, answers = run(main())
    assert answers == [(i * 10, None) for i in range(9)]
    assert fake.most_in_flight == 2
    assert fake.batches[:2] == [[0, 1], [2]]
    assert fake.batches[2] == [3, 4, 5, 6, 7, 8]     # everything that waited, in one batch


def test_max_batch_splits_a_queue():
    async def main():
        fake = FakeComponent()
        b = Batcher(fake.send, max_outstanding=3, max_batch=4)
        answers = await asyncio.gather(*(b.call(i, time.monotonic() + 1) for i in range(10)))
        return fake, answers

    fake, answers = run(main())
    assert answers == [(i * 10, None) for i in range(10)]
    assert fake.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_each_caller_gets_its_own_failure_and_a_failed_batch_fails_every_member():
    async def main():
        fake = FakeComponent(fail={2})
        b = Batcher(fake.send, max_outstanding=1)
        one = await asyncio.gather(*(b.call(i, time.monotonic() + 1) for i in range(4)))
        fake.down = "UNAVAILABLE"
        two = await asyncio.gather(*(b.call(i, time.monotonic() + 1) for i in range(3)))
        return one, two

    one, two = run(main())
    assert one == [(0, None), (10, None), (None, "INVALID_ARGUMENT"), (30, None)]
    assert two == [(None, "UNAVAILABLE")] * 3


def test_an_expired_member_fails_alone_and_the_batch_keeps_the_others_deadline():
    async def main():
        fake = FakeComponent()
        b = Batcher(fake.send, max_outstanding=1)
        now = time.monotonic()
        answers = await asyncio.gather(b.call(1, now + 0.001), b.call(2, now + 1.0), b.call(3, now + 0.5))
        return fake, answers, now

    fake, answers, now = run(main())
    assert answers == [(None, "DEADLINE_EXCEEDED"), (20, None), (30, None)]
    assert fake.batches == [[2, 3]]
    assert fake.deadlines == [pytest.approx(now + 0.5)]  # the tightest deadline of those sent


def test_a_send_that_raises_answers_every_waiting_caller():
    async def broken(requests, deadline):
        raise RuntimeError("bug in a send")

    async def main():
        b = Batcher(broken, max_outstanding=1)
        answers = await asyncio.gather(*(b.call(i, time.monotonic() + 1) for i in range(3)))
        later = await b.call(9, time.monotonic() + 1)  # and the batcher still works afterwards
        return answers, later, b.outstanding

    answers, later, outstanding = run(main())
    assert answers == [(None, "CANCELLED")] * 3 and later == (None, "CANCELLED") and outstanding == 0


# --------------------------------------------------------------------------- the batch RPCs


def _profiles():
    return [profile(skills=["python", "sql"], district="Pune", state="Maharashtra", cgpa=8.0),
            profile(skills=["excel", "accounting"], field="Commerce", district="Jaipur", state="Rajasthan"),
            profile(skills=["communication"], college_tier=3)]


@pytest.mark.parametrize("component", ["content", "collaborative"])
def test_retrieve_and_score_batches_answer_as_single_calls(loaded, catalog_rows, component):
    h, ids = loaded[component], catalog_rows["internships"][:30]
    retrieves = [common_pb2.RetrieveRequest(profile=p, n=20) for p in _profiles()]
    batch = h.ok("RetrieveBatch", common_pb2.RetrieveBatchRequest(requests=retrieves))
    assert not batch.failures
    assert list(batch.answers) == [h.ok("Retrieve", r) for r in retrieves]
    scores = [common_pb2.ScoreRequest(profile=p, internship_ids=ids, details=component == "content")
              for p in _profiles()]
    batch = h.ok("ScoreBatch", common_pb2.ScoreBatchRequest(requests=scores))
    assert list(batch.answers) == [h.ok("Score", r) for r in scores]
    assert all(len(a.scores) == len(ids) for a in batch.answers)


def test_predict_and_rank_batches_answer_as_single_calls(loaded, catalog_rows):
    ids = catalog_rows["internships"][:30]
    predicts = [success_pb2.PredictRequest(profile=p, internship_ids=ids, top_factors=3, packed_factors=True)
                for p in _profiles()]
    h = loaded["success"]
    assert list(h.ok("PredictBatch", success_pb2.PredictBatchRequest(requests=predicts)).answers) == \
        [h.ok("Predict", r) for r in predicts]
    ranks = [ranker_pb2.RankRequest(profile=p, internship_ids=ids, component_scores=[0.1 * (j % 7)] * (4 * len(ids)))
             for j, p in enumerate(_profiles())]
    h = loaded["ranker"]
    assert list(h.ok("RankBatch", ranker_pb2.RankBatchRequest(requests=ranks)).answers) == \
        [h.ok("Rank", r) for r in ranks]


def test_a_bad_request_fails_alone_with_its_own_status(loaded, catalog_rows):
    h, ids = loaded["success"], catalog_rows["internships"][:30]
    good = success_pb2.PredictRequest(profile=_profiles()[0], internship_ids=ids)
    bad = success_pb2.PredictRequest(profile=_profiles()[1], internship_ids=[])  # 1..1000 ids required
    batch = h.ok("PredictBatch", success_pb2.PredictBatchRequest(requests=[good, bad, good]))
    assert len(batch.answers) == 3 and [f.index for f in batch.failures] == [1]
    failure = batch.failures[0]
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "internship_ids" in failure.message
    assert batch.answers[0] == batch.answers[2] == h.ok("Predict", good) and not batch.answers[1].probabilities


@pytest.mark.parametrize("size", [0, MAX_BATCH + 1])
def test_a_batch_of_no_or_too_many_requests_is_invalid(loaded, size):
    h = loaded["content"]
    request = common_pb2.RetrieveBatchRequest(requests=[common_pb2.RetrieveRequest(profile=profile())] * size)
    _, _, code, details = h.call("RetrieveBatch", request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "requests" in details


# --------------------------------------------------------------------------- through the gateway


def test_concurrent_recommends_are_batched_and_answer_as_unbatched(small_system):
    """Twelve Recommends at once through a batching gateway: the component calls went in shared
    batches, and every answer equals the one a gateway without batching gives."""
    from concurrent.futures import ThreadPoolExecutor
    import sqlite3
    from contextlib import closing

    from tests.support.loopback import GatewayRunner, running_system

    with closing(sqlite3.connect(small_system.catalog)) as c:
        students = [r[0] for r in c.execute("SELECT student_id FROM students ORDER BY student_id LIMIT 12")]
    def batches() -> dict:  # (component, method) -> (batch RPCs, requests in them), from the metric
        return {(c, m): (REGISTRY.get_sample_value("pmis_gateway_batch_size_count", {"component": c, "method": m}) or 0,
                         REGISTRY.get_sample_value("pmis_gateway_batch_size_sum", {"component": c, "method": m}) or 0)
                for c, methods in BATCHED_METHODS.items() for m in methods}

    before = batches()
    with running_system(small_system, fairness_strength=0.0, max_in_flight=0) as system:
        unbatched = GatewayRunner(system.components.targets, system.catalog, fairness_strength=0.0,
                                  batch_outstanding=0)
        try:
            with ThreadPoolExecutor(12) as pool:
                batched = list(pool.map(lambda s: system.gateway.recommend(student_id=s, k=5), students))
            sent = {key: (n - before[key][0], total - before[key][1]) for key, (n, total) in batches().items()}
            alone = [unbatched.recommend(student_id=s, k=5) for s in students]
        finally:
            unbatched.close()
    assert not unbatched.gateway.fanout.batchers
    for got, want in zip(batched, alone):
        assert not got.degraded and len(got.items) == 5
        assert [(i.internship_id, round(i.score, 5)) for i in got.items] == \
            [(i.internship_id, round(i.score, 5)) for i in want.items]
    assert sent[("content", "Retrieve")][1] == len(students)          # every call went through a batch
    assert any(total > n for n, total in sent.values()), sent          # and some batches were shared
