"""The exposure ledger (models/fairness/exposure.py): gini, boosts by slot share, decay, thread safety."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from models.fairness.exposure import ExposureLedger, gini


# --------------------------------------------------------------------------------------------
# Exposure ledger
# --------------------------------------------------------------------------------------------
def test_gini():
    assert gini([1, 1, 1, 1]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)  # (n-1)/n for one holder
    assert gini([]) == 0.0 and gini([0, 0]) == 0.0
    assert gini([1, 2, 3, 4]) == pytest.approx(0.25)


def test_ledger_cold_start_and_zero_strength():
    led = ExposureLedger(np.array([1, 2, 3, 0]))
    assert np.allclose(led.boost([0, 1, 2], 1.0), 0.0)  # no traffic yet -> parity
    led.record([0, 1])
    assert np.all(led.boost([0, 1, 2, 3], 0.0) == 0.0)
    assert led.boost([3], 1.0)[0] < -0.99  # closed item (no slots): most negative
    assert np.all(np.abs(led.boost([0, 1, 2, 3], 0.5)) <= 0.5)  # bounded by strength


def test_ledger_exposure_weights():
    led = ExposureLedger(np.ones(5))
    led.record([3, 1, 4])
    assert np.allclose(led.exposure, [0, 1 / math.log2(3), 0, 1.0, 0.5])
    assert led.requests == 1


def test_ledger_pushes_underexposed_high_slot_items():
    n = 50
    slots = np.ones(n)
    slots[40:] = 10  # big employers with many open slots
    led = ExposureLedger(slots)
    for _ in range(300):
        led.record(np.arange(10))  # every list shows the same popular items
    b = led.boost(np.arange(n), 1.0)
    assert np.all(b[40:] > 0.5)  # high-slot, never shown: strongly up
    assert np.all(b[:10] < -0.5)  # shown every time with one slot: down
    assert b[40:].min() > b[10:40].max() > b[:10].max()  # more slots, bigger push
    # with close relevance scores, the boosted list now leads with the high-slot items
    scores = np.linspace(1.0, 0.8, n)
    top = np.argsort(-(scores + 0.5 * b), kind="stable")[:10]
    assert set(top.tolist()) == set(range(40, 50))


def test_ledger_boost_follows_slot_share():
    slots = np.array([1.0, 1.0, 4.0, 4.0])
    led = ExposureLedger(slots)
    for r in range(400):  # every item shown equally often, rotating through ranks
        led.record(np.roll(np.arange(4), r))
    b = led.boost(np.arange(4), 1.0)
    assert b[2] > 0 and b[3] > 0 and b[0] < 0 and b[1] < 0
    # deficit: share 0.4 vs actual 0.25 over mean share 0.25 -> tanh(0.6); 0.1 -> tanh(-0.6)
    assert b[2] == pytest.approx(np.tanh(0.6), abs=0.02)
    assert b[0] == pytest.approx(np.tanh(-0.6), abs=0.02)
    led2 = ExposureLedger(slots, kind="log_ratio")
    for r in range(400):
        led2.record(np.roll(np.arange(4), r))
    b2 = led2.boost(np.arange(4), 1.0)
    # log-ratio: share 0.4 vs 0.25 -> tanh(log 1.6); 0.1 vs 0.25 -> tanh(log 0.4)
    assert b2[2] == pytest.approx(np.tanh(np.log(1.6)), abs=0.02)
    assert b2[0] == pytest.approx(np.tanh(np.log(0.4)), abs=0.02)


def simulate_gini(strength, n_items=200, k=10, n_requests=3000, seed=7):
    rng = np.random.default_rng(seed)
    base = 1.0 / (1.0 + np.arange(n_items)) ** 0.7  # skewed popularity in (0, 1]
    led = ExposureLedger(np.ones(n_items))
    for _ in range(n_requests):
        cand = rng.choice(n_items, size=60, replace=False)
        s = base[cand] + rng.normal(0, 0.02, size=cand.size)
        s = s + led.boost(cand, strength)
        led.record(cand[np.argsort(-s, kind="stable")[:k]])
    return led.gini()


def test_ledger_reduces_exposure_gini():
    g0 = simulate_gini(0.0)
    g1 = simulate_gini(1.0)
    assert g0 > 0.5
    assert g1 <= 0.7 * g0, (g0, g1)  # >= 30 % reduction


def test_ledger_decay_half_life():
    led = ExposureLedger(np.ones(3), half_life=10)
    for _ in range(10):
        led.record([0])
    for _ in range(10):
        led.record([1])
    e = led.exposure
    # item 0's 10 unit exposures are all 10..19 requests old, item 1's are 0..9 requests old
    d = 0.5 ** (1 / 10)
    assert e[1] == pytest.approx(sum(d**h for h in range(10)))
    assert e[0] == pytest.approx(sum(d**h for h in range(10, 20)))
    assert led.boost([1], 1.0)[0] < led.boost([0], 1.0)[0] < led.boost([2], 1.0)[0]


def test_ledger_decay_renormalises_without_overflow():
    led = ExposureLedger(np.ones(4), half_life=1.0)
    for i in range(200):  # 2**200 would overflow the lazy scale without renormalising
        led.record([i % 4])
    e = led.exposure
    assert np.all(np.isfinite(e)) and e.sum() == pytest.approx(2.0, rel=1e-6)  # sum of 0.5**h
    assert np.all(np.isfinite(led.boost(np.arange(4), 1.0)))


def test_ledger_set_slots_grows_catalogue():
    led = ExposureLedger(np.ones(3))
    led.record([0, 1, 2])
    led.set_slots(np.ones(5))
    assert led.n_items == 5
    assert led.boost([3, 4], 1.0).min() > 0  # new, unseen items are under-exposed


def test_ledger_thread_safety_smoke():
    led = ExposureLedger(np.ones(100))
    w = 1.0 / np.log2(np.arange(2, 12))

    def worker(seed):
        rng = np.random.default_rng(seed)
        for _ in range(300):
            cand = rng.choice(100, size=10, replace=False)
            led.boost(cand, 1.0)
            led.record(cand)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert led.requests == 8 * 300
    assert led.exposure.sum() == pytest.approx(8 * 300 * w.sum())
