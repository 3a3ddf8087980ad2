"""Synthetic PM Internship Scheme data with planted, documented signal (see GENERATOR.md).

One call writes five tables (students, internships, companies, interactions, outcomes), an
optional SQLite catalog and ``dataset.json`` into a fresh folder. The generator is built for
scale (1M students x 100k internships in bounded memory): students are processed in chunks,
each student scores a candidate pool of ~200 internships instead of the whole catalog, skill
sets are uint64 bitmasks, and only compact application arrays are kept for the second pass
that draws selection outcomes.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from models.data import domain

GENERATOR_VERSION = 1
TABLES = ("students", "internships", "companies", "interactions", "outcomes")

# Time: every interaction lies in a 180-day window starting 2025-01-01 (UTC).
WINDOW_START = int(datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp())
WINDOW_DAYS = 180
DAY = 86_400
WINDOW_END = WINDOW_START + WINDOW_DAYS * DAY

# Planted signal: the documented coefficients (GENERATOR.md, "Planted signal").
UTIL_OVERLAP = 2.5
UTIL_PREF_SECTOR = 1.0
# Indexed by domain distance class: same district, neighbouring, same state, elsewhere, remote.
UTIL_LOCATION = np.array([1.5, 0.9, 0.4, 0.0, 0.6], dtype=np.float32)
UTIL_STIPEND = 0.8          # x log(stipend / 5000)
UTIL_TASTE = 0.8            # x (z_s . w_i) / sqrt(d)
TASTE_DIM = 6
QUALITY_SD = 0.5
EVENT_NOISE_SCALE = 0.5     # logistic noise added to u before thresholding into events
EVENT_MIX_TARGET = {"view": 0.60, "save": 0.15, "apply": 0.25}
EVENTS = ("view", "save", "apply")

SEL_OVERLAP = 3.0
SEL_CGPA = 0.9              # x (cgpa - 8)
SEL_TIER = 0.6              # x (2 - college_tier)
SEL_CROWD = -0.6            # x log(applicants per slot)

SKILL_ZIPF = 1.0            # popularity exponent of skills within a domain
POOL_SIZE = 200             # candidate internships scored per student
SCHEME_STIPEND = 5000


# ----------------------------------------------------------------------------- vocabulary

@dataclass(frozen=True)
class _Vocab:
    """Integer-coded view of domain.py, computed once per run."""

    skills: pa.Array                 # skill names, index = bit position
    n_words: int                     # uint64 words per skill mask
    soft: np.ndarray                 # indices of soft skills
    sectors: pa.Array
    sector_tech_logw: np.ndarray     # (n_sectors, n_skills) log weight of each tech skill
    field_names: list[str]
    field_skill_logw: np.ndarray     # (n_fields, n_skills) log weight of student skills
    field_sector_logw: np.ndarray    # (n_fields, n_sectors) log weight of preferred sectors
    edu_names: list[str]
    edu_p: np.ndarray
    edu_fields: list[np.ndarray]     # field indices per education
    districts: pa.Array
    d_state: np.ndarray              # state index per district
    states: pa.Array
    d_lat: np.ndarray
    d_lon: np.ndarray
    d_pop: np.ndarray                # normalised population share
    d_rural: np.ndarray
    d_other_logw: np.ndarray         # (n_d, n_d) log weight of extra preferred districts


def _vocab() -> _Vocab:
    skills = domain.SKILLS
    n_sk = len(skills)
    sk_dom = {s: d for d, ss in domain.SKILL_DOMAINS.items() for s in ss}
    soft = np.array([domain.SKILL_INDEX[s] for s in domain.SKILL_DOMAINS["soft"]])
    # Within a domain, earlier-listed skills are more common (python, excel, accounting...),
    # Zipf-like; shared popular skills give students and internships realistic overlaps.
    pop = {s: 1.0 / (r + 1) ** SKILL_ZIPF for ss in domain.SKILL_DOMAINS.values()
           for r, s in enumerate(ss)}
    dom_pop = {d: sum(pop[s] for s in ss) for d, ss in domain.SKILL_DOMAINS.items()}

    # Internship tech skills: the sector's first domain is its core, so it weighs 3x.
    sec_w = np.zeros((len(domain.SECTOR_NAMES), n_sk))
    for k, name in enumerate(domain.SECTOR_NAMES):
        doms = domain.SECTORS[name][0]
        for j, s in enumerate(skills):
            if sk_dom[s] in doms:
                sec_w[k, j] = (3.0 if sk_dom[s] == doms[0] else 1.0) * pop[s]

    # Student skills: mostly the field's domains, some soft skills, a little of anything.
    fields = list(domain.FIELD_DOMAINS)
    f_sk = np.zeros((len(fields), n_sk))
    f_sec = np.zeros((len(fields), len(domain.SECTOR_NAMES)))
    for f, name in enumerate(fields):
        doms = domain.FIELD_DOMAINS[name]
        for j, s in enumerate(skills):
            d = sk_dom[s]
            share = pop[s] / dom_pop[d]
            f_sk[f, j] = (4.0 / len(doms) * share if d in doms
                          else 2.0 * share if d == "soft" else 0.6 / n_sk)
        # Preferred sectors follow the field: each shared skill domain adds weight.
        for k, sec in enumerate(domain.SECTOR_NAMES):
            f_sec[f, k] = 0.15 + 2.0 * len(set(doms) & set(domain.SECTORS[sec][0]))

    edu_names = list(domain.EDUCATION)
    edu_p = np.array([domain.EDUCATION[e][0] for e in edu_names])
    edu_fields = [np.array([fields.index(f) for f in domain.EDUCATION[e][1]]) for e in edu_names]

    D = domain.DISTRICTS
    states = sorted({d[1] for d in D})
    d_state = np.array([states.index(d[1]) for d in D])
    lat = np.array([d[2] for d in D])
    lon = np.array([d[3] for d in D])
    pop = np.array([d[4] for d in D])
    pop = pop / pop.sum()
    # Extra preferred districts are often neighbours, sometimes same-state, rarely far away.
    km = domain.haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    w = pop[None, :] + 0.5 * (km < domain.NEIGHBOUR_KM) + 0.15 * (d_state[:, None] == d_state[None, :])
    np.fill_diagonal(w, 0.0)

    with np.errstate(divide="ignore"):
        return _Vocab(
            skills=pa.array(skills), n_words=(n_sk + 63) // 64, soft=soft,
            sectors=pa.array(domain.SECTOR_NAMES), sector_tech_logw=np.log(sec_w),
            field_names=fields, field_skill_logw=np.log(f_sk), field_sector_logw=np.log(f_sec),
            edu_names=edu_names, edu_p=edu_p / edu_p.sum(), edu_fields=edu_fields,
            districts=pa.array([d[0] for d in D]), d_state=d_state, states=pa.array(states),
            d_lat=lat, d_lon=lon, d_pop=pop, d_rural=np.array([d[5] for d in D]),
            d_other_logw=np.log(w),
        )


# ----------------------------------------------------------------------------- small helpers

def _rng(seed: int, *stream: int) -> np.random.Generator:
    """Independent, reproducible stream per purpose (and per chunk)."""
    return np.random.default_rng([seed, *stream])


def _gumbel_topk(rng, logw: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, sample k[row] distinct columns with probability proportional to exp(logw).

    Gumbel-top-k is sampling without replacement, vectorised over rows. Returns the chosen
    column indices sorted ascending (padded with -1) and the validity mask.
    """
    kmax = int(k.max())
    g = logw + rng.gumbel(size=logw.shape)
    top = np.argsort(-g, axis=1)[:, :kmax]
    valid = np.arange(kmax)[None, :] < k[:, None]
    big = np.iinfo(np.int64).max
    idx = np.sort(np.where(valid, top, big), axis=1)
    valid = idx != big
    return np.where(valid, idx, -1), valid


def _list_array(idx: np.ndarray, valid: np.ndarray, values: pa.Array) -> pa.ListArray:
    """Arrow list<string> column from a padded index matrix (row-major = list order)."""
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.take(pa.array(idx[valid])))


def _masks(idx: np.ndarray, valid: np.ndarray, n_words: int) -> np.ndarray:
    """(n, n_words) uint64 bitmask of the valid indices in each row."""
    out = np.zeros((idx.shape[0], n_words), dtype=np.uint64)
    safe = np.where(valid, idx, 0).astype(np.uint64)
    bits = np.where(valid, np.left_shift(np.uint64(1), safe % np.uint64(64)), np.uint64(0))
    for w in range(n_words):
        out[:, w] = np.bitwise_or.reduce(np.where(safe // np.uint64(64) == w, bits, np.uint64(0)), axis=1)
    return out


def _ids(prefix: str, start: int, n: int, width: int) -> pa.Array:
    return pa.array([f"{prefix}{i:0{width}d}" for i in range(start + 1, start + n + 1)])


def _ts(seconds: np.ndarray) -> pa.Array:
    """Epoch seconds -> timestamp[us, tz=UTC]."""
    return pa.array(np.asarray(seconds, dtype=np.int64) * 1_000_000, type=pa.timestamp("us", tz="UTC"))


def _categorical(rng, p: np.ndarray, n: int) -> np.ndarray:
    return rng.choice(len(p), size=n, p=np.asarray(p) / np.sum(p))


@dataclass(frozen=True)
class _Groups:
    """Items grouped by a key (district or sector): sorted item indices + offsets per key."""

    order: np.ndarray
    start: np.ndarray
    count: np.ndarray

    @classmethod
    def of(cls, keys: np.ndarray, n_keys: int) -> "_Groups":
        order = np.argsort(keys, kind="stable").astype(np.int32)
        count = np.bincount(keys, minlength=n_keys)
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        return cls(order, start, count)

    def draw(self, rng, keys: np.ndarray, n_items: int) -> np.ndarray:
        """One uniform item per key in `keys`; an empty group falls back to any item."""
        cnt = self.count[keys]
        r = (rng.random(keys.shape) * cnt).astype(np.int64)
        pos = np.minimum(self.start[keys] + r, len(self.order) - 1)
        fallback = rng.integers(0, n_items, size=keys.shape, dtype=np.int32)
        return np.where(cnt > 0, self.order[pos], fallback).astype(np.int32)


# ----------------------------------------------------------------------------- companies

_NAME_A = ["Bharat", "Hindustan", "Indus", "Shakti", "Sagar", "Vikas", "Prakash", "Ganga",
           "Sahyadri", "Nilgiri", "Deccan", "Aravali", "Kaveri", "Himalaya", "Narmada", "Konark",
           "Vindhya", "Satpura", "Godavari", "Malabar", "Coromandel", "Ajanta", "Sarthi", "Pragati"]
_NAME_B = {"Information Technology": "Infotech", "Banking and Finance": "Finserv",
           "Manufacturing": "Industries", "Automotive": "Motors", "Energy and Utilities": "Power",
           "Retail and FMCG": "Consumer", "Healthcare and Pharma": "Pharma",
           "Logistics": "Logistics", "Telecom": "Telecom", "Media and Marketing": "Media"}
_NAME_C = ["Ltd", "Limited", "Corporation", "Pvt Ltd", "Group"]
SIZES = ["Micro", "Small", "Medium", "Large"]
SIZE_P = [0.05, 0.08, 0.12, 0.75]   # top CSR spenders are mostly large; ~25 % MSME


def _companies(rng, n: int, v: _Vocab) -> tuple[pa.Table, dict]:
    industry = rng.integers(0, len(domain.SECTOR_NAMES), size=n)
    size = _categorical(rng, np.array(SIZE_P), n)
    names, seen = [], set()
    for k in range(n):
        sector = domain.SECTOR_NAMES[industry[k]]
        base = f"{_NAME_A[rng.integers(len(_NAME_A))]} {_NAME_B.get(sector, 'Enterprises')}"
        name = f"{base} {_NAME_C[rng.integers(len(_NAME_C))]}"
        if name in seen:  # keep names unique without unbounded retries
            name = f"{base} {k + 1} {_NAME_C[0]}"
        seen.add(name)
        names.append(name)
    # Internships per company are skewed; large companies post more.
    weight = rng.lognormal(0.0, 1.0, size=n) * np.where(size == 3, 3.0, 1.0)
    table = pa.table({
        "company_id": _ids("C", 0, n, 4),
        "name": pa.array(names),
        "industry": v.sectors.take(pa.array(industry)),
        "size": pa.array(SIZES).take(pa.array(size)),
    })
    return table, {"industry": industry, "weight": weight / weight.sum()}


# ----------------------------------------------------------------------------- internships

_SENT_MAIN = [
    "Join our {sector} team as a {title} and work hands-on with {s1} and {s2}.",
    "This {sector} internship builds practical skills in {s1}, {s2} and related tools.",
    "As a {title} in {sector}, you will apply {s1} every day under an experienced mentor.",
    "A {duration}-month {sector} placement focused on {s1} and {s2}.",
]
_SENT_EXTRA = [
    "Familiarity with {s3} is an advantage.",
    "You will support the team on live projects in {district}.",
    "Interns receive structured training and a certificate on completion.",
    "We value {s3} and a willingness to learn.",
    "The role includes regular reviews with a supervisor and on-the-job learning.",
    "Candidates from nearby districts are encouraged to apply.",
]


def _descriptions(rng, title, sector, district, duration, skills_idx, skills_valid) -> list[str]:
    """1-3 template sentences that always name the sector and some required skills."""
    out = []
    n_extra = rng.integers(0, 3, size=len(title))
    main = rng.integers(0, len(_SENT_MAIN), size=len(title))
    for k in range(len(title)):
        sk = [domain.SKILLS[j] for j in skills_idx[k][skills_valid[k]]]
        pick = rng.permutation(len(sk))
        s1, s2, s3 = sk[pick[0]], sk[pick[1 % len(sk)]], sk[pick[2 % len(sk)]]
        kw = dict(sector=sector[k], title=title[k], s1=s1, s2=s2, s3=s3,
                  district=district[k], duration=duration[k])
        sents = [_SENT_MAIN[main[k]].format(**kw)]
        for e in rng.choice(len(_SENT_EXTRA), size=n_extra[k], replace=False):
            sents.append(_SENT_EXTRA[e].format(**kw))
        out.append(" ".join(sents))
    return out


@dataclass
class _Internships:
    """Arrays the scoring loop needs, indexed by internship row."""

    skills: np.ndarray       # (n, W) uint64
    n_skills: np.ndarray     # float32
    sector: np.ndarray       # int16
    district: np.ndarray     # int16
    state: np.ndarray        # int16
    lat: np.ndarray
    lon: np.ndarray
    remote: np.ndarray       # bool
    static: np.ndarray       # float32: stipend term + quality_i
    taste: np.ndarray        # (n, d) float32 latent w_i
    slots: np.ndarray
    open_at: np.ndarray      # int64 epoch seconds: posted_at
    close_at: np.ndarray     # int64 epoch seconds: min(deadline, window end)
    ids: pa.Array
    by_district: _Groups
    by_sector: _Groups


def _internships(rng, n: int, comp: dict, v: _Vocab) -> tuple[pa.Table, _Internships]:
    n_sec = len(domain.SECTOR_NAMES)
    company = _categorical(rng, comp["weight"], n)
    # A company's internships are mostly in its own industry.
    other = rng.integers(0, n_sec, size=n)
    sector = np.where(rng.random(n) < 0.85, comp["industry"][company], other)

    titles = []
    t_pick = rng.random(n)
    for k in range(n):
        names = domain.SECTORS[domain.SECTOR_NAMES[sector[k]]][1]
        t = names[int(t_pick[k] * len(names))]
        titles.append(t if t.endswith("Intern") else f"{t} Intern")

    # 3-6 required skills: tech skills from the sector's domains, plus often one soft skill.
    k_total = rng.integers(3, 7, size=n)
    has_soft = rng.random(n) < 0.7
    tech_idx, tech_ok = _gumbel_topk(rng, v.sector_tech_logw[sector], k_total - has_soft)
    soft = v.soft[rng.integers(0, len(v.soft), size=n)]
    sk_idx = np.concatenate([tech_idx, np.where(has_soft, soft, -1)[:, None]], axis=1)
    sk_ok = np.concatenate([tech_ok, has_soft[:, None]], axis=1)
    big = np.iinfo(np.int64).max
    sk_idx = np.sort(np.where(sk_ok, sk_idx, big), axis=1)
    sk_ok = sk_idx != big
    sk_idx = np.where(sk_ok, sk_idx, -1)

    district = _categorical(rng, v.d_pop, n)
    lat = v.d_lat[district] + rng.normal(0, 0.08, n)
    lon = v.d_lon[district] + rng.normal(0, 0.08, n)
    remote = rng.random(n) < 0.08
    # Scheme pays Rs 5,000; some companies top up (in steps of 500, at most Rs 7,000).
    topup = np.where(rng.random(n) < 0.45, 500 * rng.integers(1, 15, size=n), 0)
    stipend = SCHEME_STIPEND + topup
    slots = np.minimum(1 + np.floor(rng.lognormal(1.0, 0.9, size=n)), 50).astype(np.int64)
    duration = np.array([12, 9, 6])[_categorical(rng, np.array([0.8, 0.1, 0.1]), n)]
    posted = WINDOW_START + rng.integers(0, 151, size=n) * DAY + rng.integers(0, DAY, size=n)
    deadline = posted + rng.integers(30, 91, size=n) * DAY

    quality = rng.normal(0, QUALITY_SD, n)
    taste = rng.standard_normal((n, TASTE_DIM)).astype(np.float32)

    sector_s = v.sectors.take(pa.array(sector))
    district_s = v.districts.take(pa.array(district))
    desc = _descriptions(rng, titles, sector_s.to_pylist(), district_s.to_pylist(), duration,
                         sk_idx, sk_ok)
    ids = _ids("I", 0, n, 6)
    table = pa.table({
        "internship_id": ids,
        "title": pa.array(titles),
        "company_id": _ids("C", 0, len(comp["weight"]), 4).take(pa.array(company)),
        "sector": sector_s,
        "description": pa.array(desc),
        "skills": _list_array(sk_idx, sk_ok, v.skills),
        "district": district_s,
        "state": v.states.take(pa.array(v.d_state[district])),
        "latitude": pa.array(lat), "longitude": pa.array(lon),
        "remote": pa.array(remote),
        "stipend": pa.array(stipend.astype(np.int64)),
        "slots": pa.array(slots),
        "duration_months": pa.array(duration.astype(np.int64)),
        "posted_at": _ts(posted), "deadline": _ts(deadline),
    })
    arrays = _Internships(
        skills=_masks(sk_idx, sk_ok, v.n_words), n_skills=sk_ok.sum(1).astype(np.float32),
        sector=sector.astype(np.int16), district=district.astype(np.int16),
        state=v.d_state[district].astype(np.int16), lat=lat, lon=lon, remote=remote,
        static=(UTIL_STIPEND * np.log(stipend / SCHEME_STIPEND) + quality).astype(np.float32),
        taste=taste, slots=slots, open_at=posted, close_at=np.minimum(deadline, WINDOW_END),
        ids=ids, by_district=_Groups.of(district, len(domain.DISTRICTS)),
        by_sector=_Groups.of(sector, n_sec),
    )
    return table, arrays


# ----------------------------------------------------------------------------- students

GENDERS, GENDER_P = ["M", "F", "O"], [0.55, 0.44, 0.01]
CATEGORIES, CATEGORY_P = ["GEN", "OBC", "SC", "ST", "EWS"], [0.28, 0.41, 0.17, 0.09, 0.05]
TIER_P = [0.15, 0.35, 0.50]


@dataclass
class _Students:
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


def _students(rng, start: int, n: int, v: _Vocab) -> tuple[pa.Table, _Students]:
    edu = _categorical(rng, v.edu_p, n)
    field = np.empty(n, dtype=np.int64)
    for e, fields in enumerate(v.edu_fields):  # field uniform within the education
        m = edu == e
        field[m] = fields[rng.integers(0, len(fields), size=m.sum())]

    sk_idx, sk_ok = _gumbel_topk(rng, v.field_skill_logw[field], rng.integers(3, 9, size=n))
    tier = 1 + _categorical(rng, np.array(TIER_P), n)
    # Better colleges have somewhat higher grades; the grade scale is 6-10.
    cgpa = np.round(np.clip(rng.normal(7.5 + 0.25 * (2 - tier), 0.8), 6.0, 10.0), 2)
    age = rng.integers(21, 25, size=n)

    district = _categorical(rng, v.d_pop, n)
    lat = v.d_lat[district] + rng.normal(0, 0.08, n)
    lon = v.d_lon[district] + rng.normal(0, 0.08, n)
    rural = rng.random(n) < v.d_rural[district]

    # Protected attributes: drawn independently of everything else, used by no rule.
    gender = _categorical(rng, np.array(GENDER_P), n)
    category = _categorical(rng, np.array(CATEGORY_P), n)
    disability = rng.random(n) < 0.03

    sec_idx, sec_ok = _gumbel_topk(rng, v.field_sector_logw[field], rng.integers(1, 4, size=n))
    sec_mask = np.bitwise_or.reduce(np.where(sec_ok, np.left_shift(1, np.maximum(sec_idx, 0)), 0),
                                    axis=1).astype(np.uint32)
    n_other = _categorical(rng, np.array([0.4, 0.35, 0.25]), n)
    if n_other.max() > 0:
        oth_idx, oth_ok = _gumbel_topk(rng, v.d_other_logw[district], n_other)
    else:
        oth_idx, oth_ok = np.zeros((n, 0), np.int64), np.zeros((n, 0), bool)
    pd_idx = np.concatenate([district[:, None], oth_idx], axis=1)
    pd_ok = np.concatenate([np.ones((n, 1), bool), oth_ok], axis=1)
    # Compact valid entries to the left so that column j < count is valid (home stays first).
    order = np.argsort(~pd_ok, axis=1, kind="stable")
    pd_idx = np.take_along_axis(pd_idx, order, 1)
    pd_ok = np.take_along_axis(pd_ok, order, 1)

    ids = _ids("S", start, n, 7)
    edu_names = pa.array(v.edu_names)
    table = pa.table({
        "student_id": ids,
        "skills": _list_array(sk_idx, sk_ok, v.skills),
        "education": edu_names.take(pa.array(edu)),
        "field": pa.array(v.field_names).take(pa.array(field)),
        "cgpa": pa.array(cgpa),
        "college_tier": pa.array(tier.astype(np.int64)),
        "age": pa.array(age.astype(np.int64)),
        "district": v.districts.take(pa.array(district)),
        "state": v.states.take(pa.array(v.d_state[district])),
        "latitude": pa.array(lat), "longitude": pa.array(lon),
        "rural": pa.array(rural),
        "gender": pa.array(GENDERS).take(pa.array(gender)),
        "social_category": pa.array(CATEGORIES).take(pa.array(category)),
        "disability": pa.array(disability),
        "preferred_sectors": _list_array(sec_idx, sec_ok, v.sectors),
        "preferred_districts": _list_array(pd_idx, pd_ok, v.districts),
    })
    arrays = _Students(
        skills=_masks(sk_idx, sk_ok, v.n_words), sectors=sec_mask,
        pref_sector_idx=np.maximum(sec_idx, 0), pref_sector_n=sec_ok.sum(1),
        district=district, state=v.d_state[district],
        pref_district_idx=pd_idx, pref_district_n=pd_ok.sum(1),
        lat=lat, lon=lon, cgpa=cgpa, tier=tier,
        taste=rng.standard_normal((n, TASTE_DIM)).astype(np.float32), ids=ids,
    )
    return table, arrays


# ----------------------------------------------------------------------------- interactions

def _candidate_pool(rng, st: _Students, it: _Internships, n_items: int) -> np.ndarray:
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


def _overlap(st: _Students, it: _Internships, pool: np.ndarray) -> np.ndarray:
    """|s.skills & i.skills| / |i.skills| via popcount of the uint64 skill masks."""
    common = np.zeros(pool.shape, dtype=np.uint8)
    for w in range(st.skills.shape[1]):
        common += np.bitwise_count(st.skills[:, w, None] & it.skills[pool, w])
    return common / it.n_skills[pool]


def _utility_det(st: _Students, it: _Internships, pool: np.ndarray, overlap: np.ndarray) -> np.ndarray:
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


def _choose(rng, st: _Students, it: _Internships, lam: float, n_items: int) -> _Chosen:
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


# ----------------------------------------------------------------------------- output

def _schema(name: str) -> pa.Schema:
    ts, s, i64, f64, b = pa.timestamp("us", tz="UTC"), pa.string(), pa.int64(), pa.float64(), pa.bool_()
    lst = pa.list_(pa.string())
    cols = {
        "students": [("student_id", s), ("skills", lst), ("education", s), ("field", s),
                     ("cgpa", f64), ("college_tier", i64), ("age", i64), ("district", s),
                     ("state", s), ("latitude", f64), ("longitude", f64), ("rural", b),
                     ("gender", s), ("social_category", s), ("disability", b),
                     ("preferred_sectors", lst), ("preferred_districts", lst)],
        "internships": [("internship_id", s), ("title", s), ("company_id", s), ("sector", s),
                        ("description", s), ("skills", lst), ("district", s), ("state", s),
                        ("latitude", f64), ("longitude", f64), ("remote", b), ("stipend", i64),
                        ("slots", i64), ("duration_months", i64), ("posted_at", ts),
                        ("deadline", ts)],
        "companies": [("company_id", s), ("name", s), ("industry", s), ("size", s)],
        "interactions": [("student_id", s), ("internship_id", s), ("event", s), ("timestamp", ts)],
        "outcomes": [("student_id", s), ("internship_id", s), ("selected", i64), ("decided_at", ts)],
    }
    return pa.schema(cols[name])


def _csv_view(table: pa.Table) -> pa.Table:
    """CSV form: list columns joined with ';', timestamps as ISO 8601 UTC ('...Z')."""
    cols = []
    for name, col in zip(table.column_names, table.columns):
        if pa.types.is_list(col.type):
            col = pc.binary_join(col, ";")
        elif pa.types.is_timestamp(col.type):
            secs = col.cast(pa.int64()).to_numpy() // 1_000_000
            iso = np.char.add(np.datetime_as_string(secs.astype("datetime64[s]"), unit="s"), "Z")
            col = pa.array(iso.tolist(), type=pa.string())
        cols.append(col)
    return pa.table(cols, names=table.column_names)


class _Sink:
    """Appends tables chunk by chunk to <dir>/<name>.parquet or .csv."""

    def __init__(self, directory: Path, name: str, fmt: str):
        self.schema = _schema(name)
        self.fmt = fmt
        self.rows = 0
        self.path = directory / f"{name}.{fmt}"
        self._w = None

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        if self.fmt == "parquet":
            if self._w is None:
                self._w = pq.ParquetWriter(self.path, self.schema, compression="zstd")
            self._w.write_table(table)
        else:
            table = _csv_view(table)
            if self._w is None:
                self._w = pacsv.CSVWriter(self.path, table.schema)
            self._w.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self._w is None:  # an empty table still gets a file with its header/schema
            self.write(self.schema.empty_table())
        self._w.close()


# ----------------------------------------------------------------------------- selection

def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _solve_intercept(logit: np.ndarray, rate: float) -> float:
    """b0 such that mean(sigmoid(b0 + logit)) == rate (monotone in b0, so bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if _sigmoid(mid + logit).mean() < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _oracle_auc(selected: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score
    if len(np.unique(selected)) < 2:
        return None
    return float(roc_auc_score(selected, p))


# ----------------------------------------------------------------------------- driver

def _check_args(students, internships, companies, interactions_per_student, selection_rate,
                fmt, chunk_size):
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', not {fmt!r}")
    if not 1 <= students <= 9_999_999:
        raise ValueError("students must be in 1..9,999,999 (ids are S + 7 digits)")
    if not 1 <= internships <= 999_999:
        raise ValueError("internships must be in 1..999,999 (ids are I + 6 digits)")
    if not 1 <= companies <= 9_999:
        raise ValueError("companies must be in 1..9,999 (ids are C + 4 digits)")
    if interactions_per_student < 1:
        raise ValueError("interactions_per_student must be >= 1")
    if not 0 < selection_rate < 1:
        raise ValueError("selection_rate must be in (0, 1)")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if len(domain.SECTOR_NAMES) > 32:
        raise ValueError("preferred-sector bitmask holds at most 32 sectors")


def _prepare_out_dir(out_dir: Path) -> Path:
    """Refuse a non-empty out_dir; return a fresh temporary sibling to write into."""
    if out_dir.exists():
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp) so the folder gets the usual umask permissions once renamed.
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def generate(out_dir: Path, *, students: int = 5000, internships: int = 1000, companies: int = 72,
             interactions_per_student: float = 10.0, selection_rate: float = 0.13, seed: int = 42,
             fmt: str = "parquet", chunk_size: int = 50_000, progress: bool = True,
             catalog: bool = True) -> dict:
    """Write a synthetic dataset into `out_dir` and return the summary written to dataset.json.

    Deterministic for a given (seed, sizes, chunk_size). Written to a temporary sibling folder
    and renamed into place at the end, so a failure never leaves a partial dataset.
    """
    out_dir = Path(out_dir)
    _check_args(students, internships, companies, interactions_per_student, selection_rate,
                fmt, chunk_size)
    tmp = _prepare_out_dir(out_dir)
    try:
        summary = _generate_into(tmp, students=students, internships=internships,
                                 companies=companies, lam=float(interactions_per_student),
                                 selection_rate=selection_rate, seed=seed, fmt=fmt,
                                 chunk_size=chunk_size, progress=progress)
        if catalog:
            from models.data.catalog import build_catalog
            build_catalog(tmp, tmp / "catalog.db", progress=progress)
        (tmp / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); rename cannot replace a directory
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _generate_into(tmp: Path, *, students, internships, companies, lam, selection_rate, seed,
                   fmt, chunk_size, progress) -> dict:
    v = _vocab()
    comp_table, comp = _companies(_rng(seed, 1), companies, v)
    it_table, it = _internships(_rng(seed, 2), internships, comp, v)
    sinks = {name: _Sink(tmp, name, fmt) for name in TABLES}
    sinks["companies"].write(comp_table)
    for lo in range(0, internships, chunk_size):
        sinks["internships"].write(it_table.slice(lo, chunk_size))

    apps = _interaction_pass(sinks, it, v, students=students, n_items=internships, lam=lam,
                             seed=seed, chunk_size=chunk_size, progress=progress)
    sel = _outcome_pass(sinks["outcomes"], apps, it, selection_rate, seed, chunk_size)
    for s in sinks.values():
        s.close()

    events = apps.pop("event_counts")
    total = sum(events.values())
    return {
        "generator": "models.data.generate", "generator_version": GENERATOR_VERSION,
        "seed": seed, "format": fmt,
        "params": {"students": students, "internships": internships, "companies": companies,
                   "interactions_per_student": lam, "selection_rate": selection_rate,
                   "chunk_size": chunk_size, "pool_size": POOL_SIZE, "taste_dim": TASTE_DIM},
        "window": {"start": "2025-01-01T00:00:00Z", "days": WINDOW_DAYS},
        "rows": {name: s.rows for name, s in sinks.items()},
        "event_mix_target": EVENT_MIX_TARGET,
        "event_mix": {e: round(events[e] / max(total, 1), 4) for e in EVENTS},
        "event_thresholds": apps["thresholds"],
        "selection_rate_target": selection_rate,
        "selection_rate": sel["rate"], "selection_intercept": sel["b0"],
        "oracle_auc": sel["auc"],
    }


def _interaction_pass(sinks, it: _Internships, v: _Vocab, *, students, n_items, lam, seed,
                      chunk_size, progress) -> dict:
    """Students chunk by chunk: write students + interactions, keep compact application arrays."""
    app_s, app_i, app_logit, app_ts = [], [], [], []
    counts = dict.fromkeys(EVENTS, 0)
    thresholds = None
    bar = tqdm(total=students, unit="student", desc="students", disable=not progress)
    for chunk_no, lo in enumerate(range(0, students, chunk_size)):
        n = min(chunk_size, students - lo)
        rng = _rng(seed, 3, chunk_no)
        st_table, st = _students(rng, lo, n, v)
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
            "timestamp": _ts(ts),
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


def _outcome_pass(sink: _Sink, apps: dict, it: _Internships, rate: float, seed: int,
                  chunk_size: int) -> dict:
    """Selection once applicants-per-slot is known; b0 calibrated to the target rate."""
    rng = _rng(seed, 4)
    item = apps["item"]
    per_slot = np.bincount(item, minlength=len(it.slots)) / it.slots
    logit = apps["logit"].astype(np.float64) + SEL_CROWD * np.log(per_slot[item])
    b0 = _solve_intercept(logit, rate) if len(logit) else 0.0
    p = _sigmoid(b0 + logit)
    selected = (rng.random(len(p)) < p).astype(np.int64)
    decided = apps["ts"] + rng.integers(7 * DAY, 30 * DAY + 1, size=len(p))
    step = max(chunk_size, 100_000)
    for lo in range(0, len(p), step):
        sl = slice(lo, lo + step)
        sink.write(pa.table({
            "student_id": _student_ids(apps["student"][sl]),
            "internship_id": it.ids.take(pa.array(item[sl])),
            "selected": pa.array(selected[sl]),
            "decided_at": _ts(decided[sl]),
        }))
    return {"b0": round(b0, 6), "rate": round(float(selected.mean()), 6) if len(p) else None,
            "auc": None if not len(p) else _round(_oracle_auc(selected, p))}


def _round(x, nd=4):
    return None if x is None else round(x, nd)


def _student_ids(index: np.ndarray) -> pa.Array:
    return pa.array([f"S{i + 1:07d}" for i in index.tolist()])
