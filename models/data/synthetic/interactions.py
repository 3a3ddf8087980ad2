"""The first pass: students chunk by chunk see a candidate pool of internships, choose by the
planted utility, and view, save or apply; students and interactions are written as they go.

Only compact arrays of the applications are kept, for the outcome pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from models.data import domain
from models.data.synthetic.internships import InternshipArrays
from models.data.synthetic.params import (EVENT_MIX_TARGET, EVENT_NOISE_SCALE, EVENTS, POOL_SIZE, SEL_CGPA,
                                          SEL_OVERLAP, SEL_TIER, TASTE_DIM, UTIL_LOCATION, UTIL_OVERLAP,
                                          UTIL_PREF_SECTOR, UTIL_TASTE)
from models.data.synthetic.sampling import seeded_rng, timestamps
from models.data.synthetic.students import StudentArrays, draw_students
from models.data.synthetic.vocab import Vocab


def interaction_pass(sinks, it: InternshipArrays, v: Vocab, *, students, n_items, lam, seed,
                     chunk_size, progress) -> dict:
    """Students chunk by chunk: write students + interactions, keep compact application arrays."""
    app_s, app_i, app_logit, app_ts = [], [], [], []
    counts = dict.fromkeys(EVENTS, 0)
    thresholds = None
    bar = tqdm(total=students, unit="student", desc="students", disable=not progress)
    for chunk_no, lo in enumerate(range(0, students, chunk_size)):
        n = min(chunk_size, students - lo)
        rng = seeded_rng(seed, 3, chunk_no)
        st_table, st = draw_students(rng, lo, n, v)
        sinks["students"].write(st_table)

        ch = _choose(rng, st, it, lam, n_items)
        # Fresh noise, not the Gumbel draw that chose the pair: reusing it would make chosen
        # 'elsewhere' items look as attractive as local ones (selection explains away the signal).
        e = ch.u_det + rng.logistic(0.0, EVENT_NOISE_SCALE, size=len(ch.u_det)).astype(np.float32)
        if thresholds is None:  # calibrated once, on the first chunk (students are i.i.d.)
            thresholds = _event_thresholds(e)
        event = (e > thresholds[0]).astype(np.int8) + (e > thresholds[1])
        span = it.close_at[ch.item] - it.open_at[ch.item]
        ts = it.open_at[ch.item] + (rng.random(len(ch.item)) * span).astype(np.int64)

        order = np.lexsort((ts, ch.student))  # by student, then time
        r, item, event, ts = ch.student[order], ch.item[order], event[order], ts[order]
        sinks["interactions"].write(pa.table({
            "student_id": st.ids.take(pa.array(r)),
            "internship_id": it.ids.take(pa.array(item)),
            "event": pa.array(list(EVENTS)).take(pa.array(event)),
            "timestamp": timestamps(ts),
        }))
        for k, name in enumerate(EVENTS):
            counts[name] += int((event == k).sum())

        a = event == 2
        ov = ch.overlap[order][a]
        app_s.append((lo + r[a]).astype(np.int32))
        app_i.append(item[a].astype(np.int32))
        app_logit.append((SEL_OVERLAP * ov + SEL_CGPA * (st.cgpa[r[a]] - 8)
                          + SEL_TIER * (2 - st.tier[r[a]])).astype(np.float32))
        app_ts.append(ts[a])
        bar.update(n)
    bar.close()
    return {"student": np.concatenate(app_s), "item": np.concatenate(app_i),
            "logit": np.concatenate(app_logit), "ts": np.concatenate(app_ts),
            "event_counts": counts, "thresholds": list(thresholds)}


def _candidate_pool(rng, st: StudentArrays, it: InternshipArrays, n_items: int) -> np.ndarray:
    """(n, POOL_SIZE) candidate internships per student, sorted per row (may repeat).

    A third local (half home district, half any preferred district), a third from the
    student's preferred sectors, a third uniform: the exposure a search page would give.
    """
    n = len(st.cgpa)
    k = POOL_SIZE // 3
    rows = np.arange(n)[:, None]
    col = (rng.random((n, k)) * st.pref_district_n[:, None]).astype(np.int64)
    col[rng.random((n, k)) < 0.5] = 0
    local = it.by_district.draw(rng, st.pref_district_idx[rows, col], n_items)
    col = (rng.random((n, k)) * st.pref_sector_n[:, None]).astype(np.int64)
    sector = it.by_sector.draw(rng, st.pref_sector_idx[rows, col], n_items)
    anywhere = rng.integers(0, n_items, size=(n, POOL_SIZE - 2 * k), dtype=np.int32)
    return np.sort(np.concatenate([local, sector, anywhere], axis=1), axis=1)


def _overlap(st: StudentArrays, it: InternshipArrays, pool: np.ndarray) -> np.ndarray:
    """|s.skills & i.skills| / |i.skills| via popcount of the uint64 skill masks."""
    common = np.zeros(pool.shape, dtype=np.uint8)
    for w in range(st.skills.shape[1]):
        common += np.bitwise_count(st.skills[:, w, None] & it.skills[pool, w])
    return common / it.n_skills[pool]


def _utility_det(st: StudentArrays, it: InternshipArrays, pool: np.ndarray,
                 overlap: np.ndarray) -> np.ndarray:
    """Deterministic part of u (everything but the Gumbel noise), float32 (n, P)."""
    u = UTIL_OVERLAP * overlap.astype(np.float32)
    sec = it.sector[pool].astype(np.uint32)
    u += UTIL_PREF_SECTOR * ((st.sectors[:, None] >> sec) & 1).astype(np.float32)
    km = domain.haversine_km(st.lat[:, None], st.lon[:, None], it.lat[pool], it.lon[pool])
    dclass = domain.distance_class(st.district[:, None] == it.district[pool],
                                   st.state[:, None] == it.state[pool], km, it.remote[pool])
    u += UTIL_LOCATION[dclass]
    u += it.static[pool]
    taste = np.zeros(pool.shape, dtype=np.float32)
    for k in range(TASTE_DIM):  # z_s . w_i without materialising an (n, P, d) array
        taste += st.taste[:, k, None] * it.taste[pool, k]
    u += (UTIL_TASTE / math.sqrt(TASTE_DIM)) * taste
    return u


@dataclass
class _Chosen:
    student: np.ndarray    # row within chunk
    item: np.ndarray       # internship index
    u_det: np.ndarray      # utility without the Gumbel noise that chose the pair
    overlap: np.ndarray


def _choose(rng, st: StudentArrays, it: InternshipArrays, lam: float, n_items: int) -> _Chosen:
    """Gumbel-top-n over each student's de-duplicated pool, n = 1 + Poisson(lam - 1)."""
    pool = _candidate_pool(rng, st, it, n_items)
    n = pool.shape[0]
    overlap = _overlap(st, it, pool).astype(np.float32)
    u_det = _utility_det(st, it, pool, overlap)
    u = u_det + rng.gumbel(size=pool.shape).astype(np.float32)
    dup = np.zeros(pool.shape, dtype=bool)
    dup[:, 1:] = pool[:, 1:] == pool[:, :-1]   # rows are sorted, so repeats are adjacent
    u[dup] = -np.inf
    distinct = POOL_SIZE - dup.sum(axis=1)
    n_pick = np.minimum(1 + rng.poisson(max(lam - 1.0, 0.0), size=n), distinct)
    kmax = int(n_pick.max())
    top = np.argpartition(-u, kmax - 1, axis=1)[:, :kmax] if kmax < POOL_SIZE else \
        np.tile(np.arange(POOL_SIZE), (n, 1))
    rows = np.arange(n)[:, None]
    top = np.take_along_axis(top, np.argsort(-u[rows, top], axis=1), axis=1)
    keep = np.arange(kmax)[None, :] < n_pick[:, None]
    r = np.broadcast_to(rows, top.shape)[keep]
    c = top[keep]
    return _Chosen(student=r, item=pool[r, c], u_det=u_det[r, c], overlap=overlap[r, c])


def _event_thresholds(e: np.ndarray) -> tuple[float, float]:
    """Cut points on the event score so that the target view/save/apply mix is met."""
    q_view = EVENT_MIX_TARGET["view"]
    return (float(np.quantile(e, q_view)),
            float(np.quantile(e, q_view + EVENT_MIX_TARGET["save"])))
