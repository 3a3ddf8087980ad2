"""Students: one chunk of the students table, and the arrays the interaction pass scores with.

The random draws happen in one fixed order (`_draw`): the order is part of what a seed means,
so reordering them changes every generated dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from models.data.synthetic.params import TASTE_DIM
from models.data.synthetic.sampling import bitmasks, categorical, draw_places, gumbel_topk, id_array, list_array
from models.data.synthetic.vocab import Vocab

GENDERS, GENDER_P = ["M", "F", "O"], [0.55, 0.44, 0.01]
CATEGORIES, CATEGORY_P = ["GEN", "OBC", "SC", "ST", "EWS"], [0.28, 0.41, 0.17, 0.09, 0.05]
TIER_P = [0.15, 0.35, 0.50]


@dataclass
class StudentArrays:
    skills: np.ndarray        # (n, W) uint64
    sectors: np.ndarray       # uint32 bitmask of preferred sectors
    pref_sector_idx: np.ndarray
    pref_sector_n: np.ndarray
    district: np.ndarray
    state: np.ndarray
    pref_district_idx: np.ndarray   # column 0 = home
    pref_district_n: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    cgpa: np.ndarray
    tier: np.ndarray
    taste: np.ndarray         # (n, d) float32 latent z_s
    ids: pa.Array


@dataclass
class _Drawn:
    """Every attribute drawn for a chunk of students, one row per student."""

    education: np.ndarray
    field: np.ndarray
    skill_idx: np.ndarray           # padded with -1 (see gumbel_topk)
    skill_ok: np.ndarray
    tier: np.ndarray
    cgpa: np.ndarray
    age: np.ndarray
    district: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    rural: np.ndarray
    gender: np.ndarray
    category: np.ndarray
    disability: np.ndarray
    sector_idx: np.ndarray          # preferred sectors, padded with -1
    sector_ok: np.ndarray
    pref_district_idx: np.ndarray   # column 0 = home, valid entries first
    pref_district_ok: np.ndarray
    taste: np.ndarray


def draw_students(rng, start: int, n: int, v: Vocab) -> tuple[pa.Table, StudentArrays]:
    """Students start + 1 .. start + n: their table rows and their scoring arrays."""
    d = _draw(rng, n, v)
    ids = id_array("S", start, n, 7)
    return _table(d, ids, v), _arrays(d, ids, v)


def _draw(rng, n: int, v: Vocab) -> _Drawn:
    education, field = _education_and_field(rng, n, v)
    skill_idx, skill_ok = gumbel_topk(rng, v.field_skill_logw[field], rng.integers(3, 9, size=n))
    tier = 1 + categorical(rng, np.array(TIER_P), n)
    # Better colleges have somewhat higher grades; the grade scale is 6-10.
    cgpa = np.round(np.clip(rng.normal(7.5 + 0.25 * (2 - tier), 0.8), 6.0, 10.0), 2)
    age = rng.integers(21, 25, size=n)
    district, lat, lon = draw_places(rng, n, v)
    rural = rng.random(n) < v.d_rural[district]
    # Protected attributes: drawn independently of everything else, used by no rule.
    gender = categorical(rng, np.array(GENDER_P), n)
    category = categorical(rng, np.array(CATEGORY_P), n)
    disability = rng.random(n) < 0.03
    sector_idx, sector_ok = gumbel_topk(rng, v.field_sector_logw[field], rng.integers(1, 4, size=n))
    pd_idx, pd_ok = _preferred_districts(rng, district, v)
    taste = rng.standard_normal((n, TASTE_DIM)).astype(np.float32)
    return _Drawn(education=education, field=field, skill_idx=skill_idx, skill_ok=skill_ok,
                  tier=tier, cgpa=cgpa, age=age, district=district, lat=lat, lon=lon, rural=rural,
                  gender=gender, category=category, disability=disability, sector_idx=sector_idx,
                  sector_ok=sector_ok, pref_district_idx=pd_idx, pref_district_ok=pd_ok, taste=taste)


def _education_and_field(rng, n: int, v: Vocab) -> tuple[np.ndarray, np.ndarray]:
    edu = categorical(rng, v.edu_p, n)
    field = np.empty(n, dtype=np.int64)
    for e, fields in enumerate(v.edu_fields):  # field uniform within the education
        m = edu == e
        field[m] = fields[rng.integers(0, len(fields), size=m.sum())]
    return edu, field


def _preferred_districts(rng, district: np.ndarray, v: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """Home plus 0-2 extra districts (often neighbours): padded indices and the valid mask."""
    n = len(district)
    n_other = categorical(rng, np.array([0.4, 0.35, 0.25]), n)
    if n_other.max() > 0:
        oth_idx, oth_ok = gumbel_topk(rng, v.d_other_logw[district], n_other)
    else:
        oth_idx, oth_ok = np.zeros((n, 0), np.int64), np.zeros((n, 0), bool)
    pd_idx = np.concatenate([district[:, None], oth_idx], axis=1)
    pd_ok = np.concatenate([np.ones((n, 1), bool), oth_ok], axis=1)
    # Compact valid entries to the left so that column j < count is valid (home stays first).
    order = np.argsort(~pd_ok, axis=1, kind="stable")
    return np.take_along_axis(pd_idx, order, 1), np.take_along_axis(pd_ok, order, 1)


def _table(d: _Drawn, ids: pa.Array, v: Vocab) -> pa.Table:
    return pa.table({
        "student_id": ids,
        "skills": list_array(d.skill_idx, d.skill_ok, v.skills),
        "education": pa.array(v.edu_names).take(pa.array(d.education)),
        "field": pa.array(v.field_names).take(pa.array(d.field)),
        "cgpa": pa.array(d.cgpa),
        "college_tier": pa.array(d.tier.astype(np.int64)),
        "age": pa.array(d.age.astype(np.int64)),
        "district": v.districts.take(pa.array(d.district)),
        "state": v.states.take(pa.array(v.d_state[d.district])),
        "latitude": pa.array(d.lat), "longitude": pa.array(d.lon),
        "rural": pa.array(d.rural),
        "gender": pa.array(GENDERS).take(pa.array(d.gender)),
        "social_category": pa.array(CATEGORIES).take(pa.array(d.category)),
        "disability": pa.array(d.disability),
        "preferred_sectors": list_array(d.sector_idx, d.sector_ok, v.sectors),
        "preferred_districts": list_array(d.pref_district_idx, d.pref_district_ok, v.districts),
    })


def _arrays(d: _Drawn, ids: pa.Array, v: Vocab) -> StudentArrays:
    sector_bits = np.where(d.sector_ok, np.left_shift(1, np.maximum(d.sector_idx, 0)), 0)
    return StudentArrays(
        skills=bitmasks(d.skill_idx, d.skill_ok, v.n_words),
        sectors=np.bitwise_or.reduce(sector_bits, axis=1).astype(np.uint32),
        pref_sector_idx=np.maximum(d.sector_idx, 0), pref_sector_n=d.sector_ok.sum(1),
        district=d.district, state=v.d_state[d.district],
        pref_district_idx=d.pref_district_idx, pref_district_n=d.pref_district_ok.sum(1),
        lat=d.lat, lon=d.lon, cgpa=d.cgpa, tier=d.tier, taste=d.taste, ids=ids,
    )
