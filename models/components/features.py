"""Student and internship arrays, and the student x internship pair features built from them.

One code path for training, evaluation and serving: the trainers build `StudentTable` and
`ItemTable` from DataFrames, the servers from a profile dict or a bundle's arrays, and both call
`pair_features`. Skill sets are bitsets (uint64 words), so overlaps over millions of pairs are a
few vectorised AND + popcount operations. Protected attributes never enter these tables.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from models.data.domain import distance_class, haversine_km

EDUCATION_LEVEL = {"class 10": 0, "class 12": 1, "iti": 2, "diploma": 3, "ba": 4, "bsc": 4, "bcom": 4,
                   "bca": 4, "bba": 4, "bpharma": 4}

# The features of a student x internship pair, in column order. Student-only columns (cgpa, tier,
# education) matter to the success predictor; they are constant within one student's ranking.
PAIR_FEATURES = [
    "skill_overlap", "skills_matched", "skills_missing", "distance_class", "log_distance_km",
    "preferred_sector", "preferred_district", "log_stipend", "remote", "duration_months",
    "log_slots", "competition", "cgpa", "college_tier", "education_level",
]


class Vocabulary:
    """A fixed list of lowercase tokens -> index; unknown tokens are ignored, never added."""

    def __init__(self, tokens):
        self.tokens = np.asarray(sorted({str(t).strip().lower() for t in tokens} - {""}), dtype=str)
        self.index = {t: i for i, t in enumerate(self.tokens.tolist())}

    def __len__(self) -> int:
        return len(self.tokens)

    def bitsets(self, lists) -> np.ndarray:
        """Encode a sequence of token lists as an (n, words) uint64 bitset matrix."""
        n, words = len(lists), max(1, (len(self.tokens) + 63) // 64)
        rows, cols = [], []
        for r, tokens in enumerate(lists):
            for t in tokens:
                c = self.index.get(str(t).lower())
                if c is not None:
                    rows.append(r)
                    cols.append(c)
        out = np.zeros((n, words), dtype=np.uint64)
        if rows:
            rows_a, cols_a = np.asarray(rows), np.asarray(cols)
            np.bitwise_or.at(out, (rows_a, cols_a // 64), np.left_shift(np.uint64(1), (cols_a % 64).astype(np.uint64)))
        return out

    def decode(self, bits: np.ndarray) -> list[str]:
        """Tokens whose bits are set in one bitset row."""
        return self.decode_many(np.asarray(bits)[None, :])[0]

    def flags(self, bits: np.ndarray) -> np.ndarray:
        """(n, tokens) booleans from an (n, words) bitset matrix, vectorised with unpackbits."""
        bits = np.ascontiguousarray(bits, dtype="<u8")
        return np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :len(self.tokens)].astype(bool)

    def decode_many(self, bits: np.ndarray) -> list[list[str]]:
        """Tokens per row of an (n, words) bitset matrix."""
        rows, cols = np.nonzero(self.flags(bits))
        out: list[list[str]] = [[] for _ in range(len(bits))]
        for r, c in zip(rows.tolist(), self.tokens[cols].tolist()):
            out[r].append(c)
        return out


def popcount(bits: np.ndarray) -> np.ndarray:
    return np.bitwise_count(bits).sum(axis=-1).astype(np.float32)


def _str_array(values, n) -> np.ndarray:
    if values is None:
        return np.full(n, "", dtype=str)
    return np.asarray(["" if _missing(v) else str(v).strip().lower() for v in values], dtype=str)


def _missing(v) -> bool:
    return v is None or v is _NA or (isinstance(v, float) and v != v)


def _lists(values, n) -> list:
    return [[]] * n if values is None else [[] if v is None else v for v in values]


def _float_array(values, n) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan, dtype=np.float64)
    return np.asarray([np.nan if v is None or v is _NA else v for v in values], dtype=np.float64)


try:  # pandas' NA must count as missing when columns come from a DataFrame
    from pandas import NA as _NA
except ImportError:  # pragma: no cover
    _NA = object()


@dataclass
class StudentTable:
    ids: np.ndarray
    skills: np.ndarray            # (n, words) uint64 bitsets over the skill vocabulary
    cgpa: np.ndarray
    college_tier: np.ndarray
    education_level: np.ndarray
    district: np.ndarray
    state: np.ndarray
    latitude: np.ndarray
    longitude: np.ndarray
    preferred_sectors: np.ndarray    # (n, words) bitsets over the sector vocabulary
    preferred_districts: np.ndarray  # (n, words) bitsets over the district vocabulary

    @classmethod
    def from_columns(cls, cols: dict, skills: Vocabulary, sectors: Vocabulary, districts: Vocabulary):
        """Build from a mapping column -> sequence (a DataFrame, or a dict of lists for one profile)."""
        n = len(cols["student_id"])
        get = lambda name: cols[name] if name in cols else None  # noqa: E731
        edu = _str_array(get("education"), n)
        return cls(
            ids=np.asarray([str(v) for v in cols["student_id"]], dtype=str),
            skills=skills.bitsets(list(cols["skills"])),
            cgpa=_float_array(get("cgpa"), n),
            college_tier=_float_array(get("college_tier"), n),
            education_level=np.asarray([EDUCATION_LEVEL.get(e, np.nan) for e in edu], dtype=np.float64),
            district=_str_array(get("district"), n),
            state=_str_array(get("state"), n),
            latitude=_float_array(get("latitude"), n),
            longitude=_float_array(get("longitude"), n),
            preferred_sectors=sectors.bitsets(_lists(get("preferred_sectors"), n)),
            preferred_districts=districts.bitsets(_lists(get("preferred_districts"), n)),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def arrays(self, prefix: str = "student_") -> dict[str, np.ndarray]:
        return {prefix + f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class ItemTable:
    ids: np.ndarray
    skills: np.ndarray      # (n, words) uint64 bitsets over the skill vocabulary
    sector: np.ndarray      # index into the sector vocabulary, -1 if unknown
    district: np.ndarray
    district_code: np.ndarray  # index into the district vocabulary, -1 if unknown
    state: np.ndarray
    latitude: np.ndarray
    longitude: np.ndarray
    remote: np.ndarray
    stipend: np.ndarray
    slots: np.ndarray
    duration_months: np.ndarray
    deadline: np.ndarray    # epoch seconds; +inf-like (int64 max) when unknown
    applicants: np.ndarray  # applications seen in the training data (competition)

    @classmethod
    def from_frame(cls, df, skills: Vocabulary, sectors: Vocabulary, districts: Vocabulary,
                   applicants: np.ndarray | None = None):
        n = len(df)
        sector = _str_array(df["sector"], n)
        district = _str_array(df["district"], n)
        deadline = df["deadline"]
        deadline_s = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        known = deadline.notna().to_numpy()
        if known.any():
            deadline_s[known] = deadline[known].astype("datetime64[s, UTC]").astype("int64").to_numpy()
        return cls(
            ids=np.asarray(df["internship_id"].astype(str).to_numpy(), dtype=str),
            skills=skills.bitsets(list(df["skills"])),
            sector=np.asarray([sectors.index.get(s, -1) for s in sector], dtype=np.int32),
            district=district,
            district_code=np.asarray([districts.index.get(d, -1) for d in district], dtype=np.int32),
            state=_str_array(df["state"], n),
            latitude=_float_array(df["latitude"], n),
            longitude=_float_array(df["longitude"], n),
            remote=df["remote"].fillna(False).to_numpy(dtype=bool),
            stipend=_float_array(df["stipend"], n),
            slots=_float_array(df["slots"], n),
            duration_months=_float_array(df["duration_months"], n),
            deadline=deadline_s,
            applicants=(np.zeros(n, dtype=np.float64) if applicants is None
                        else np.asarray(applicants, dtype=np.float64)),
        )

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "item_"):
        # Plain ndarray views of a bundle's memory maps: the same shared pages, without the
        # memmap subclass's Python-level bookkeeping on every index operation.
        return cls(**{f.name: np.asarray(arrays[prefix + f.name]).view(np.ndarray) for f in fields(cls)})

    def arrays(self, prefix: str = "item_") -> dict[str, np.ndarray]:
        return {prefix + f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}

    def __len__(self) -> int:
        return len(self.ids)


def _bit_is_set(bitsets: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """bitsets[rows] has bit cols set (cols < 0 -> False); vectorised over pairs."""
    ok = cols >= 0
    c = np.where(ok, cols, 0).astype(np.int64)
    words = bitsets[rows, c // 64]
    return ok & ((words >> (c % 64).astype(np.uint64)) & np.uint64(1)).astype(bool)


def pair_features(students: StudentTable, s_pos: np.ndarray, items: ItemTable, i_pos: np.ndarray) -> np.ndarray:
    """Feature matrix (n_pairs, len(PAIR_FEATURES)) float32 for pairs (students[s_pos], items[i_pos])."""
    s_pos = np.asarray(s_pos, dtype=np.int64)
    i_pos = np.asarray(i_pos, dtype=np.int64)
    s_sk, i_sk = students.skills[s_pos], items.skills[i_pos]
    required = popcount(i_sk)
    matched = popcount(s_sk & i_sk)
    s_dist, i_dist = students.district[s_pos], items.district[i_pos]
    s_state, i_state = students.state[s_pos], items.state[i_pos]
    km = haversine_km(students.latitude[s_pos], students.longitude[s_pos],
                      items.latitude[i_pos], items.longitude[i_pos])
    remote = items.remote[i_pos]
    dclass = distance_class((s_dist == i_dist) & (s_dist != ""), (s_state == i_state) & (s_state != ""), km, remote)
    slots = items.slots[i_pos]
    cols = [
        matched / np.maximum(required, 1.0),
        matched,
        required - matched,
        dclass,
        np.where(remote, 0.0, np.log1p(km)),
        _bit_is_set(students.preferred_sectors, s_pos, items.sector[i_pos]),
        _bit_is_set(students.preferred_districts, s_pos, items.district_code[i_pos]),
        np.log(np.maximum(items.stipend[i_pos], 1.0)),
        remote,
        items.duration_months[i_pos],
        np.log(np.maximum(slots, 1.0)),
        np.log1p(items.applicants[i_pos] / np.maximum(np.nan_to_num(slots, nan=1.0), 1.0)),
        students.cgpa[s_pos],
        students.college_tier[s_pos],
        students.education_level[s_pos],
    ]
    return np.column_stack([np.asarray(c, dtype=np.float32) for c in cols])


def matched_missing(students: StudentTable, s: int, items: ItemTable, i: int, vocab: Vocabulary):
    """(matched skills, missing skills) of one student for one internship."""
    s_bits, i_bits = students.skills[s], items.skills[i]
    return vocab.decode(s_bits & i_bits), vocab.decode(i_bits & ~s_bits)


@dataclass
class FeatureSpace:
    """Vocabularies plus the internship table: everything needed to featurise any student.

    Stored inside every bundle that scores pairs, so each component is self-contained and can
    be rolled out on its own.
    """
    skills: Vocabulary
    sectors: Vocabulary
    districts: Vocabulary
    items: ItemTable

    @classmethod
    def build(cls, students, internships, applicants: np.ndarray | None = None) -> "FeatureSpace":
        skill_tokens = {s for lst in internships["skills"] for s in lst} | {s for lst in students["skills"] for s in lst}
        sectors = Vocabulary(_str_array(internships["sector"], len(internships)).tolist())
        districts = Vocabulary(set(_str_array(internships["district"], len(internships)).tolist())
                               | set(_str_array(students["district"], len(students)).tolist()))
        skills = Vocabulary(skill_tokens)
        return cls(skills, sectors, districts, ItemTable.from_frame(internships, skills, sectors, districts, applicants))

    def students(self, cols) -> StudentTable:
        return StudentTable.from_columns(cols, self.skills, self.sectors, self.districts)

    def arrays(self) -> dict[str, np.ndarray]:
        return {**self.items.arrays(), "vocab_skills": self.skills.tokens, "vocab_sectors": self.sectors.tokens,
                "vocab_districts": self.districts.tokens}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "FeatureSpace":
        return cls(Vocabulary(arrays["vocab_skills"]), Vocabulary(arrays["vocab_sectors"]),
                   Vocabulary(arrays["vocab_districts"]), ItemTable.from_arrays(arrays))
