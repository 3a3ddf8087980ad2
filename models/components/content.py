"""Content model: TF-IDF over an internship's skills, title, description and sector.

A student's profile (skills, field, preferred sectors) is embedded with the same vectoriser and
scored by cosine similarity against every internship, so it works for a brand-new student from
the profile alone. Skills also enter as whole-phrase tokens ("skill_machine_learning"), so that
"machine learning" the skill weighs more than the words "machine" and "learning" in a description.

Bundle layout (`save` / `from_bundle`; format in models/bundle/format.py):
- arrays: `item_ids`; `item_matrix_*` (the internships' TF-IDF rows, CSR); the feature space
  (`features.FeatureSpace.arrays()`): `item_*`, every internship's columns, and `vocab_skills`,
  `vocab_sectors`, `vocab_districts`;
- objects: `vectorizer` (the fitted scikit-learn TfidfVectorizer, a pickle).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from models.bundle.format import arrays_to_csr, Bundle, BundleRef, csr_to_arrays
from models.bundle.writing import write_bundle
from models.components.features import Vocabulary

COMPONENT = "content"


class Embedding(NamedTuple):
    """TF-IDF rows (float32, L2-normalised) as the arrays of a CSR matrix, without the matrix: what
    `ContentModel.similarity` and `SkillExplainer.table` read, and what a server returns as the
    student vector. Building a scipy matrix validates its arrays, which costs more than embedding
    one profile."""
    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]

    def matrix(self) -> sp.csr_matrix:
        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)


def _csr_arrays(rows: sp.spmatrix | Embedding) -> sp.csr_matrix | Embedding:
    """`rows` as something with CSR arrays: an `Embedding` as it is, a scipy matrix as CSR."""
    return rows.tocsr() if sp.issparse(rows) else rows


def _dense_row(rows: sp.csr_matrix | Embedding, r: int = 0) -> np.ndarray:
    """Row `r` of CSR rows as a dense vector; repeated terms add up, as in scipy's `toarray`."""
    dense = np.zeros(rows.shape[1], dtype=rows.data.dtype)
    np.add.at(dense, rows.indices[rows.indptr[r]:rows.indptr[r + 1]], rows.data[rows.indptr[r]:rows.indptr[r + 1]])
    return dense


@dataclass
class SkillTable:
    """Matched and missing skills of many internships, packed: internship i's matched skills are
    the next matched_counts[i] entries of matched_skills (with matched_weights), strongest first;
    its missing skills the next missing_counts[i] of missing_skills, by weight in the internship."""
    matched_counts: np.ndarray
    matched_skills: np.ndarray
    matched_weights: np.ndarray
    missing_counts: np.ndarray
    missing_skills: np.ndarray

    def rows(self) -> list[tuple[list[tuple[str, float]], list[str]]]:
        """Per internship: ([(matched skill, weight)], [missing skill])."""
        matched = np.split(np.arange(len(self.matched_skills)), np.cumsum(self.matched_counts)[:-1])
        missing = np.split(self.missing_skills, np.cumsum(self.missing_counts)[:-1])
        names, weights = self.matched_skills.tolist(), self.matched_weights.tolist()
        return [([(names[j], weights[j]) for j in m.tolist()], lack.tolist()) for m, lack in zip(matched, missing)]


class SkillExplainer:
    """Matched and missing skills for any set of internships in a few array operations.

    A matched skill's weight is its own term in the cosine match (profile weight x internship
    weight of the skill's whole-phrase token); a missing skill ranks by its weight in the
    internship (what it would add). Both are part of the score itself (the rest comes from the
    words of the skills, the field and the sector).
    """

    def __init__(self, model: "ContentModel", skills: Vocabulary, item_bits: np.ndarray):
        """`skills`: the feature space's skill vocabulary; `item_bits`: each internship's skills as
        its bitset row, in the model's internship order."""
        self.skills, self.tokens = skills, skills.tokens
        self.names = self.tokens.astype(object)  # the tokens as Python strings, listed without conversion
        columns = model.skill_columns(self.tokens.tolist())
        known = np.flatnonzero(columns >= 0)
        self.columns = columns
        self.known_tokens, self.known_columns = known, columns[known]  # the skills with a phrase token
        # (internships, skills): each internship's weight of each skill's phrase token.
        sub = model.item_matrix[:, columns[known]].tocsr()
        self.weights = sp.csr_matrix((sub.data, known[sub.indices], sub.indptr),
                                     shape=(model.item_matrix.shape[0], len(self.tokens)))
        # Each internship's skills as CSR arrays, strongest first (equal weights in vocabulary
        # order): a call gathers its internships' few skills instead of slicing matrices, and
        # their missing skills come out already in order.
        items, tokens, weights = self._skills_of_items(item_bits)
        order = np.lexsort((tokens, -weights, items))
        self.item_skills, self.item_weights = tokens[order], weights[order]
        self.item_indptr = np.searchsorted(items[order], np.arange(len(item_bits) + 1)).astype(np.int64)

    def table(self, profile_vector: sp.csr_matrix | Embedding, skills, positions) -> SkillTable:
        positions = np.asarray(positions, dtype=np.int64)
        at, lengths = _rows_entries(self.item_indptr, positions)  # each internship's skills, strongest first
        rows, skill = np.repeat(np.arange(len(positions)), lengths), self.item_skills[at]
        matched = self.flags_of(skills)[skill]
        rows_m, skill_m = rows[matched], skill[matched]
        w = self.item_weights[at][matched] * self.profile_weights(profile_vector)[skill_m]
        order = np.lexsort((skill_m, -w, rows_m))  # by internship, strongest first, ties in vocabulary order
        missing = ~matched
        return SkillTable(np.bincount(rows_m, minlength=len(positions)), self.names[skill_m[order]], w[order],
                          np.bincount(rows[missing], minlength=len(positions)), self.names[skill[missing]])

    def profile_weights(self, profile_vector: sp.csr_matrix | Embedding) -> np.ndarray:
        """(tokens,) the profile's weight of each skill's phrase token (0 where it has none)."""
        weights = np.zeros(len(self.tokens))
        weights[self.known_tokens] = _dense_row(_csr_arrays(profile_vector))[self.known_columns]
        return weights

    def _skills_of_items(self, item_bits: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, ...]:
        """(internship, skill, weight) of every internship's every skill, row-major; a chunk of
        internships at a time, so a large catalogue never exists as one dense table."""
        parts = [(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))]
        for start in range(0, len(item_bits), chunk):
            items, tokens = np.nonzero(self.skills.flags(item_bits[start:start + chunk]))
            weights = self.weights[start:start + chunk].toarray()[items, tokens].astype(np.float64)
            parts.append((items + start, tokens, weights))
        return tuple(np.concatenate(column) for column in zip(*parts))

    def flags_of(self, skills) -> np.ndarray:
        """(tokens,) booleans: the vocabulary's skills among `skills` (normalised like it)."""
        found = (self.skills.index.get(str(s).strip().lower()) for s in skills)
        flags = np.zeros(len(self.tokens), dtype=bool)
        flags[[i for i in found if i is not None]] = True
        return flags


def _rows_entries(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the entries of some rows of a CSR matrix are in its arrays, concatenated in the order
    of `rows`; and how many each row has."""
    starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
    at = np.arange(lengths.sum()) + np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return at, lengths


def _analyser(vectorizer: TfidfVectorizer):
    """The fitted vectoriser's analyser. For the word uni- and bigrams `ContentModel.fit` asks for
    (no stop words), its own preprocessor and tokenizer with the bigrams joined in one pass, as
    scikit-learn's n-gram loop cost more than the rest of a profile's embedding; any other
    configuration gets scikit-learn's. Equal to `build_analyzer()` (tested)."""
    v = vectorizer
    if v.analyzer != "word" or v.input != "content" or tuple(v.ngram_range) != (1, 2) or v.get_stop_words():
        return v.build_analyzer()
    preprocess, tokenize = v.build_preprocessor(), v.build_tokenizer()

    def analyse(text: str) -> list[str]:
        words = tokenize(preprocess(text))
        return words + list(map(" ".join, zip(words, words[1:])))
    return analyse


def _skill_tokens(skills) -> str:
    return " ".join("skill_" + str(s).replace(" ", "_") for s in skills)


def internship_text(title, description, sector, skills) -> str:
    skills = list(skills) if skills is not None else []
    tokens = _skill_tokens(skills)
    return " ".join([
        str(title or ""), str(description or ""), f"sector {sector or ''}",
        " ".join(map(str, skills)), tokens, tokens,
    ])


def profile_text(skills, field=None, preferred_sectors=None) -> str:
    skills = list(skills) if skills is not None else []
    sectors = list(preferred_sectors) if preferred_sectors is not None else []
    tokens = _skill_tokens(skills)
    return " ".join([
        " ".join(map(str, skills)), tokens, tokens,
        str(field or ""),
        " ".join(f"sector {s}" for s in sectors),
    ])


class ContentModel:
    def __init__(self, vectorizer: TfidfVectorizer, item_matrix: sp.csr_matrix, item_ids: np.ndarray):
        self.vectorizer = vectorizer
        self.item_matrix = item_matrix  # (n_items, vocabulary), rows L2-normalised
        # Sorted column indices let a few items be scored from their own rows (`similarity`); a
        # fresh TF-IDF fit leaves them unsorted, and a model fitted in training would otherwise
        # score a shortlist's one internship against the whole catalogue, as no server does.
        self.item_matrix.sort_indices()
        self.item_ids = item_ids
        self._embedding = None  # (analyser, vocabulary, idf), read from the fitted vectoriser on first use
        self._postings = None   # item_matrix transposed (terms x items): an inverted index

    @classmethod
    def fit(cls, internships, min_df: int = 1) -> "ContentModel":
        texts = [internship_text(t, d, s, k) for t, d, s, k in zip(
            internships["title"], internships["description"], internships["sector"], internships["skills"])]
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=min_df,
                                     token_pattern=r"(?u)\b\w[\w_]+\b", dtype=np.float32)
        matrix = vectorizer.fit_transform(texts).tocsr()
        return cls(vectorizer, matrix, np.asarray(internships["internship_id"].astype(str), dtype=str))

    def embed(self, texts: list[str]) -> sp.csr_matrix:
        """TF-IDF rows (float32, L2-normalised) of `texts`: the fitted vectoriser's own analyser,
        vocabulary and idf, applied without its per-call input validation, which cost more than
        the arithmetic for one profile. Equal to `vectorizer.transform` (tested)."""
        return self.embed_rows(texts).matrix()

    def embed_rows(self, texts: list[str]) -> Embedding:
        """`embed`, as bare CSR arrays (what a server needs for one profile)."""
        if self._embedding is None:
            v = self.vectorizer
            if not (v.sublinear_tf and v.use_idf and v.norm == "l2" and not v.binary):
                raise ValueError("the content model embeds with sublinear tf, idf and l2 norm only")
            self._embedding = (_analyser(v), v.vocabulary_, np.asarray(v.idf_, dtype=np.float32))
        analyse, vocabulary, idf = self._embedding
        indptr, indices, counts = [0], [], []
        for text in texts:
            row = Counter(map(vocabulary.get, analyse(text)))
            row.pop(None, None)  # terms outside the vocabulary
            columns = sorted(row)
            indices.extend(columns)
            counts.extend(map(row.__getitem__, columns))
            indptr.append(len(indices))
        columns = np.asarray(indices, dtype=np.int32)
        data = np.log(np.asarray(counts, dtype=np.float32)) + np.float32(1.0)
        data *= idf[columns]
        rows = np.repeat(np.arange(len(texts)), np.diff(indptr))
        norms = np.sqrt(np.bincount(rows, weights=data * data, minlength=len(texts)))
        data /= norms[rows].astype(np.float32)
        return Embedding(data, columns, np.asarray(indptr, dtype=np.int32), (len(texts), len(vocabulary)))

    def score(self, profile_texts: list[str], item_pos: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarity (n_profiles, n_items) — or (n_profiles, len(item_pos)) for given items."""
        return self.similarity(self.embed(profile_texts), item_pos)

    def similarity(self, q: sp.csr_matrix | Embedding, item_pos: np.ndarray | None = None) -> np.ndarray:
        """`score` for profiles already embedded (a server embeds once, then scores and explains).

        Through an inverted index: a profile's few terms pick their postings (the internships that
        contain them), whose weighted sum is the cosine; a sparse product's set-up cost more than
        this arithmetic. One code path for every caller, so retrieval, scoring of given items and
        the evaluation agree to the bit.
        """
        q = _csr_arrays(q)
        few = item_pos is not None and len(item_pos) * 20 < self.item_matrix.shape[0]
        if few and self.item_matrix.has_sorted_indices:  # a few items of a large catalogue: their rows
            return self._similarity_of_rows(q, np.asarray(item_pos, dtype=np.int64))
        if self._postings is None:
            self._postings = self.item_matrix.T.tocsr()
        post, n_items = self._postings, self.item_matrix.shape[0]
        out = np.empty((q.shape[0], n_items), dtype=np.float32)
        for r in range(q.shape[0]):
            terms = q.indices[q.indptr[r]:q.indptr[r + 1]]
            weights = q.data[q.indptr[r]:q.indptr[r + 1]].astype(np.float64)
            at, lengths = _rows_entries(post.indptr, terms)
            contributions = np.repeat(weights, lengths) * post.data[at]
            out[r] = np.bincount(post.indices[at], weights=contributions, minlength=n_items)
        return out if item_pos is None else out[:, np.asarray(item_pos, dtype=np.int64)]

    def _similarity_of_rows(self, q: sp.csr_matrix | Embedding, item_pos: np.ndarray) -> np.ndarray:
        """`similarity` for a few given internships: their own rows, not the whole catalogue's
        postings. Each internship's terms are added in ascending term order, as through the
        postings, so the two agree to the bit."""
        m = self.item_matrix
        at, lengths = _rows_entries(m.indptr, item_pos)
        rows, columns, values = np.repeat(np.arange(len(item_pos)), lengths), m.indices[at], m.data[at]
        out = np.zeros((q.shape[0], len(item_pos)), dtype=np.float32)
        for r in range(q.shape[0]):
            terms, weights = q.indices[q.indptr[r]:q.indptr[r + 1]], q.data[q.indptr[r]:q.indptr[r + 1]]
            if not len(terms):
                continue
            order = np.argsort(terms, kind="stable")
            terms, weights = terms[order], weights[order]
            k = np.minimum(np.searchsorted(terms, columns), len(terms) - 1)
            hit = terms[k] == columns
            out[r] = np.bincount(rows[hit], weights=weights[k[hit]].astype(np.float64) * values[hit],
                                 minlength=len(item_pos))
        return out

    def skill_columns(self, skills) -> np.ndarray:
        """Vocabulary column of each skill's whole-phrase token (-1 when the vectoriser lacks it)."""
        vocabulary = self.vectorizer.vocabulary_
        return np.array([vocabulary.get("skill_" + str(sk).replace(" ", "_"), -1) for sk in skills], dtype=np.int64)

    def save(self, root, metadata: dict, space_arrays: dict) -> BundleRef:
        # The feature space (skill vocabulary, internship skills) rides along for matched/missing skills.
        arrays = {**space_arrays, "item_ids": self.item_ids, **csr_to_arrays("item_matrix", self.item_matrix)}
        return write_bundle(root, COMPONENT, arrays=arrays, objects={"vectorizer": self.vectorizer},
                            metadata=metadata, pickled_libraries=("scikit-learn",))

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "ContentModel":
        a = bundle.arrays
        return cls(bundle.objects["vectorizer"], arrays_to_csr("item_matrix", a), a["item_ids"])
