"""Student and internship arrays, and the student x internship pair features built from them.

One code path for training, evaluation and serving: the trainers build `StudentTable` and
`ItemTable` from DataFrames, the servers from a profile dict or a bundle's arrays, and both call
`pair_features`. Skill sets are bitsets (uint64 words), so overlaps over millions of pairs are a
few vectorised AND + popcount operations. Protected attributes never enter these tables.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property

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
# The pair features that depend on the internship alone (ItemTable.own_features), a run of columns.
ITEM_FEATURES = ["log_stipend", "remote", "duration_months", "log_slots", "competition"]
_ITEM_COLUMNS = slice(PAIR_FEATURES.index(ITEM_FEATURES[0]), PAIR_FEATURES.index(ITEM_FEATURES[-1]) + 1)
assert PAIR_FEATURES[_ITEM_COLUMNS] == ITEM_FEATURES


class Vocabulary:
    """A fixed list of lowercase tokens -> index; unknown tokens are ignored, never added."""

    def __init__(self, tokens):
        self.tokens = np.asarray(sorted({str(t).strip().lower() for t in tokens} - {""}), dtype=str)
        self.index = {t: i for i, t in enumerate(self.tokens.tolist())}

    def __len__(self) -> int:
        return len(self.tokens)

    def bitsets(self, lists) -> np.ndarray:
        """Encode a sequence of token lists as an (n, words) uint64 bitset matrix."""
        words = max(1, (len(self.tokens) + 63) // 64)
        # Each token is a dict lookup in Python anyway; setting its bit in a Python int there
        # costs less than collecting (row, column) pairs for a numpy scatter afterwards.
        flat: list[int] = []
        for tokens in lists:
            row = [0] * words
            for t in tokens:
                c = self.index.get(str(t).lower())
                if c is not None:
                    row[c >> 6] |= 1 << (c & 63)
            flat += row
        return np.array(flat, dtype=np.uint64).reshape(len(lists), words)

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


@dataclass(frozen=True)
class BitLocations:
    """Where each of a table's vocabulary indexes sits in a bitset row: its word, and its bit as a
    mask. An unknown index (-1) gets mask 0: never set."""
    word: np.ndarray
    mask: np.ndarray

    @classmethod
    def of(cls, codes: np.ndarray) -> "BitLocations":
        codes = np.asarray(codes, dtype=np.int64)
        known = codes >= 0
        bit = np.left_shift(np.uint64(1), (np.where(known, codes, 0) % 64).astype(np.uint64))
        return cls(np.where(known, codes // 64, 0), np.where(known, bit, np.uint64(0)))

    def is_set(self, bitsets: np.ndarray, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """bitsets[rows] has the bit of entries `positions` set; vectorised over pairs."""
        return (bitsets[rows, self.word[positions]] & self.mask[positions]) != 0


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

    # Per-internship parts of the pair features, computed once per table instead of once per pair
    # (a new table, e.g. from `dataclasses.replace`, computes its own).

    def warm(self) -> "ItemTable":
        """Compute the cached columns now (a server: at load, not on a client's call)."""
        for cached in ("skill_counts", "sector_bits", "district_bits", "own_features"):
            getattr(self, cached)
        return self

    @cached_property
    def skill_counts(self) -> np.ndarray:
        """Skills each internship asks for, float32."""
        return popcount(self.skills)

    @cached_property
    def sector_bits(self) -> BitLocations:
        return BitLocations.of(self.sector)

    @cached_property
    def district_bits(self) -> BitLocations:
        return BitLocations.of(self.district_code)

    @cached_property
    def own_features(self) -> np.ndarray:
        """(n, len(ITEM_FEATURES)) float32: the pair features that depend on the internship alone."""
        slots = self.slots
        cols = [
            np.log(np.maximum(self.stipend, 1.0)),
            self.remote,
            self.duration_months,
            np.log(np.maximum(slots, 1.0)),
            np.log1p(self.applicants / np.maximum(np.nan_to_num(slots, nan=1.0), 1.0)),
        ]
        return np.column_stack([np.asarray(c, dtype=np.float32) for c in cols])


_COLUMN = {name: j for j, name in enumerate(PAIR_FEATURES)}


def pair_features(students: StudentTable, s_pos: np.ndarray, items: ItemTable, i_pos: np.ndarray) -> np.ndarray:
    """Feature matrix (n_pairs, len(PAIR_FEATURES)) float32 for pairs (students[s_pos], items[i_pos])."""
    s_pos = np.asarray(s_pos, dtype=np.int64)
    i_pos = np.asarray(i_pos, dtype=np.int64)
    if len(students) == 1:
        # One student (every serving call): its row broadcasts against the items' columns
        # instead of being copied once per pair.
        s_pos = s_pos[:1]
    out = np.empty((len(i_pos), len(PAIR_FEATURES)), dtype=np.float32)

    def put(name: str, values) -> None:
        out[:, _COLUMN[name]] = values

    required = items.skill_counts[i_pos]
    matched = popcount(students.skills[s_pos] & items.skills[i_pos])
    put("skill_overlap", matched / np.maximum(required, 1.0))
    put("skills_matched", matched)
    put("skills_missing", required - matched)

    s_district, s_state = students.district[s_pos], students.state[s_pos]
    km = haversine_km(students.latitude[s_pos], students.longitude[s_pos],
                      items.latitude[i_pos], items.longitude[i_pos])
    remote = items.remote[i_pos]
    put("distance_class", distance_class((s_district == items.district[i_pos]) & (s_district != ""),
                                         (s_state == items.state[i_pos]) & (s_state != ""), km, remote))
    put("log_distance_km", np.where(remote, 0.0, np.log1p(km)))
    put("preferred_sector", items.sector_bits.is_set(students.preferred_sectors, s_pos, i_pos))
    put("preferred_district", items.district_bits.is_set(students.preferred_districts, s_pos, i_pos))

    out[:, _ITEM_COLUMNS] = items.own_features[i_pos]
    put("cgpa", students.cgpa[s_pos])
    put("college_tier", students.college_tier[s_pos])
    put("education_level", students.education_level[s_pos])
    return out


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
