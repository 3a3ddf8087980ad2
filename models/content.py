"""Content model: TF-IDF over an internship's skills, title, description and sector.

A student's profile (skills, field, preferred sectors) is embedded with the same vectoriser and
scored by cosine similarity against every internship, so it works for a brand-new student from
the profile alone. Skills also enter as whole-phrase tokens ("skill_machine_learning"), so that
"machine learning" the skill weighs more than the words "machine" and "learning" in a description.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from models.bundle import Bundle, BundleRef, arrays_to_csr, csr_to_arrays, write_bundle

COMPONENT = "content"


def _skill_tokens(skills) -> str:
    return " ".join("skill_" + str(s).replace(" ", "_") for s in skills)


def internship_text(title, description, sector, skills) -> str:
    skills = list(skills) if skills is not None else []
    return " ".join([
        str(title or ""), str(description or ""), f"sector {sector or ''}",
        " ".join(map(str, skills)), _skill_tokens(skills), _skill_tokens(skills),
    ])


def profile_text(skills, field=None, preferred_sectors=None) -> str:
    skills = list(skills) if skills is not None else []
    sectors = list(preferred_sectors) if preferred_sectors is not None else []
    return " ".join([
        " ".join(map(str, skills)), _skill_tokens(skills), _skill_tokens(skills),
        str(field or ""),
        " ".join(f"sector {s}" for s in sectors),
    ])


class ContentModel:
    def __init__(self, vectorizer: TfidfVectorizer, item_matrix: sp.csr_matrix, item_ids: np.ndarray):
        self.vectorizer = vectorizer
        self.item_matrix = item_matrix  # (n_items, vocabulary), rows L2-normalised
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
        if self._embedding is None:
            v = self.vectorizer
            if not (v.sublinear_tf and v.use_idf and v.norm == "l2" and not v.binary):
                raise ValueError("the content model embeds with sublinear tf, idf and l2 norm only")
            self._embedding = (v.build_analyzer(), v.vocabulary_, np.asarray(v.idf_, dtype=np.float32))
        analyse, vocabulary, idf = self._embedding
        indptr, indices, counts = [0], [], []
        for text in texts:
            row = Counter(c for c in map(vocabulary.get, analyse(text)) if c is not None)
            columns = sorted(row)
            indices.extend(columns)
            counts.extend(row[c] for c in columns)
            indptr.append(len(indices))
        columns = np.asarray(indices, dtype=np.int32)
        data = np.log(np.asarray(counts, dtype=np.float32)) + np.float32(1.0)
        data *= idf[columns]
        rows = np.repeat(np.arange(len(texts)), np.diff(indptr))
        norms = np.sqrt(np.bincount(rows, weights=data * data, minlength=len(texts)))
        data /= norms[rows].astype(np.float32)
        return sp.csr_matrix((data, columns, np.asarray(indptr, dtype=np.int32)),
                             shape=(len(texts), len(vocabulary)))

    def score(self, profile_texts: list[str], item_pos: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarity (n_profiles, n_items) — or (n_profiles, len(item_pos)) for given items."""
        return self.similarity(self.embed(profile_texts), item_pos)

    def similarity(self, q: sp.csr_matrix, item_pos: np.ndarray | None = None) -> np.ndarray:
        """`score` for profiles already embedded (a server embeds once, then scores and explains).

        Through an inverted index: a profile's few terms pick their postings (the internships that
        contain them), whose weighted sum is the cosine; a sparse product's set-up cost more than
        this arithmetic. One code path for every caller, so retrieval, scoring of given items and
        the evaluation agree to the bit.
        """
        q = q.tocsr()
        few = item_pos is not None and len(item_pos) * 20 < self.item_matrix.shape[0]
        if few and self.item_matrix.has_sorted_indices:  # a few items of a large catalogue: their rows
            return self._similarity_of_rows(q, np.asarray(item_pos, dtype=np.int64))
        if self._postings is None:
            self._postings = self.item_matrix.T.tocsr()
        post, n_items = self._postings, self.item_matrix.shape[0]
        out = np.empty((q.shape[0], n_items), dtype=np.float32)
        for r in range(q.shape[0]):
            terms = q.indices[q.indptr[r]:q.indptr[r + 1]]
            starts, lengths = post.indptr[terms], np.diff(post.indptr)[terms]
            at = np.arange(lengths.sum()) + np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
            weights = np.repeat(q.data[q.indptr[r]:q.indptr[r + 1]].astype(np.float64), lengths) * post.data[at]
            out[r] = np.bincount(post.indices[at], weights=weights, minlength=n_items)
        return out if item_pos is None else out[:, np.asarray(item_pos, dtype=np.int64)]

    def _similarity_of_rows(self, q: sp.csr_matrix, item_pos: np.ndarray) -> np.ndarray:
        """`similarity` for a few given internships: their own rows, not the whole catalogue's
        postings. Each internship's terms are added in ascending term order, as through the
        postings, so the two agree to the bit."""
        m = self.item_matrix
        starts, lengths = m.indptr[item_pos], m.indptr[item_pos + 1] - m.indptr[item_pos]
        at = np.arange(lengths.sum()) + np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        columns, values = m.indices[at], m.data[at]
        rows = np.repeat(np.arange(len(item_pos)), lengths)
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

    def _skill_columns(self, skills: list[str]) -> np.ndarray:
        """Vocabulary column of each skill's whole-phrase token (-1 when the vectoriser lacks it)."""
        vocabulary = self.vectorizer.vocabulary_
        return np.array([vocabulary.get("skill_" + sk.replace(" ", "_"), -1) for sk in skills], dtype=np.int64)

    def _row_weights(self, item_pos: int, columns: np.ndarray) -> np.ndarray:
        """TF-IDF weights of `columns` in one internship's row (0 where absent), straight from the
        CSR arrays: slicing a scipy row costs ~100 us, this a few."""
        m = self.item_matrix
        lo, hi = int(m.indptr[item_pos]), int(m.indptr[item_pos + 1])
        hit = m.indices[lo:hi][None, :] == columns[:, None]      # (skills, row nnz)
        return np.where(hit.any(axis=1), m.data[lo:hi][hit.argmax(axis=1)], 0.0).astype(np.float64)

    def skill_weight(self, item_pos: int, skill: str) -> float:
        """TF-IDF weight of a skill's phrase token in an internship's vector: how much that skill
        contributes to (or, if missing, would add to) the cosine match. 0 when absent."""
        return float(self._row_weights(item_pos, self._skill_columns([skill]))[0])

    def skill_details(self, profile_vector: sp.csr_matrix, positions, matched, missing) -> list:
        """Per internship (of `positions`): its matched skills with each one's own term in the cosine
        match (profile weight x internship weight of the skill's whole-phrase token), strongest
        first; and its missing skills by their weight in the internship, strongest first (what they
        would add). The terms are part of the score itself (the rest comes from the words of the
        skills, the field and the sector). One pass over each internship's row."""
        q = profile_vector.tocsr()
        in_profile = dict(zip(q.indices.tolist(), q.data.tolist()))
        vocabulary, m, out = self.vectorizer.vocabulary_, self.item_matrix, []
        column = lambda skill: vocabulary.get("skill_" + skill.replace(" ", "_"), -1)  # noqa: E731
        for p, have, lack in zip(np.asarray(positions).tolist(), matched, missing):
            lo, hi = int(m.indptr[p]), int(m.indptr[p + 1])
            row = dict(zip(m.indices[lo:hi].tolist(), m.data[lo:hi].tolist()))
            terms = sorted(((s, in_profile.get(column(s), 0.0) * row.get(column(s), 0.0)) for s in have),
                           key=lambda t: -t[1])
            out.append((terms, sorted(lack, key=lambda s: -row.get(column(s), 0.0))))
        return out

    def skill_terms(self, profile_vector: sp.csr_matrix, item_pos: int, skills: list[str]) -> list[tuple[str, float]]:
        """`skill_details` of matched skills for one internship."""
        return self.skill_details(profile_vector, [item_pos], [skills], [[]])[0][0]

    def order_skills(self, item_pos: int, skills: list[str]) -> list[str]:
        """`skill_details` of missing skills for one internship."""
        empty = sp.csr_matrix((1, self.item_matrix.shape[1]), dtype=np.float32)
        return self.skill_details(empty, [item_pos], [[]], [skills])[0][1]

    def save(self, root, metadata: dict, space_arrays: dict) -> BundleRef:
        # The feature space (skill vocabulary, internship skills) rides along for matched/missing skills.
        arrays = {**space_arrays, "item_ids": self.item_ids, **csr_to_arrays("item_matrix", self.item_matrix)}
        return write_bundle(root, COMPONENT, arrays=arrays, objects={"vectorizer": self.vectorizer},
                            metadata=metadata, pickled_libraries=("scikit-learn",))

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "ContentModel":
        a = bundle.arrays
        return cls(bundle.objects["vectorizer"], arrays_to_csr("item_matrix", a), a["item_ids"])
