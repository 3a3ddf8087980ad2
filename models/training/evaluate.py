"""Offline evaluation of the recommendation pipeline on a time window.

The pipeline here is the serving pipeline: retrieve top-N candidates from content and
collaborative, union them, score each candidate with every component, then order by the ranker
(or the static blend, or success alone). Popularity, content and collaborative are also
evaluated alone over the whole open catalogue. Students are processed in chunks so that the
dense (students x internships) score blocks stay small at any catalogue size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from models.components.collaborative import CollaborativeModel
from models.components.content import ContentModel
from models.components.features import FeatureSpace, StudentTable, pair_features
from models.training.metrics import gather, group_breakdown, ranking_metrics, top_k
from models.pipeline import COLLABORATIVE, CONTENT, POPULARITY, SUCCESS, Candidates, best_k, rank, top_n_rows
from models.components.ranker import RankerModel, ranker_features
from models.components.success import SuccessModel

DENSE_BLOCK_CELLS = 20_000_000  # students x items per dense score block (~80 MB of float32)


def chunk_size(n_items: int) -> int:
    """Students per block, so that a block's dense score matrices stay around DENSE_BLOCK_CELLS."""
    return int(max(50, min(2000, DENSE_BLOCK_CELLS // max(n_items, 1))))


@dataclass
class Components:
    """The models of one stage and the data they may see (everything before the stage's cutoff)."""
    content: ContentModel
    collaborative: CollaborativeModel
    success: SuccessModel | None
    space: FeatureSpace            # item table with applicant counts as of the cutoff
    students: StudentTable         # all students, featurised with the same vocabularies
    profile_texts: list[str]       # content profile text per student
    seen: sp.csr_matrix            # (students x items) any interaction before the cutoff
    open_items: np.ndarray         # bool per item: deadline not passed at the cutoff
    available: np.ndarray | None = None  # bool per item, applied after retrieval (serving: not full)


@dataclass
class CandidateBlock(Candidates):
    """The serving pipeline's `Candidates` for a block of students, with what evaluation also needs."""
    rows: np.ndarray | None = None          # student positions (n,)
    content_full: np.ndarray | None = None  # (n, items) content scores with excluded items at -inf
    collab_full: np.ndarray | None = None   # (n, items) collaborative scores (popularity for unknown students)


def collaborative_scores(cf: CollaborativeModel, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, items) scores and which students the model knows through interactions: folded in from
    their history exactly as the collaborative service does; popularity for the others."""
    history = cf.user_items[rows]
    known = np.asarray(history.getnnz(axis=1) > 0)
    scores = np.array(cf.popularity_scores(len(rows)), dtype=np.float32)
    if known.any():
        rows_known = history[np.flatnonzero(known)]
        scores[known] = cf.scores_of(rows_known, cf.fold_in_rows(rows_known))
    return scores, known


def candidate_block(c: Components, rows: np.ndarray, n_candidates: int) -> CandidateBlock:
    """Retrieve, union, filter and score the candidates of a block of students: the serving
    pipeline's stages (models.pipeline), in process."""
    rows = np.asarray(rows)
    content = c.content.score([c.profile_texts[r] for r in rows])
    collab, known = collaborative_scores(c.collaborative, rows)
    excluded = c.seen[rows].toarray().astype(bool) | ~c.open_items[None, :]
    content[excluded] = -np.inf
    collab[excluded] = -np.inf
    found = Candidates.union(top_n_rows(content, n_candidates), top_n_rows(collab, n_candidates))
    block = CandidateBlock(found.items, found.valid, found.scores, rows=rows, content_full=content,
                           collab_full=collab)
    block.keep(~excluded if c.available is None else ~excluded & c.available[None, :])
    block.lookup(CONTENT, content)
    block.lookup(COLLABORATIVE, np.where(known[:, None], collab, np.nan))
    block.lookup(POPULARITY, np.broadcast_to(c.collaborative.popularity, content.shape))
    r_idx = np.broadcast_to(np.arange(len(rows))[:, None], block.items.shape)
    block.pair = pair_features(c.students, rows[r_idx[block.valid]], c.space.items, block.items[block.valid])
    if c.success is not None:
        block.scores[..., SUCCESS][block.valid] = c.success.predict(block.pair)
    return block


def _pipeline_top_k(block: CandidateBlock, scores: np.ndarray, k: int):
    pos = best_k(block, scores, k)
    found = pos >= 0
    pos = np.where(found, pos, 0)
    return np.take_along_axis(block.items, pos, axis=1), found & np.take_along_axis(block.valid, pos, axis=1)


def pipeline_scores(block: CandidateBlock, blend_weights: dict, ranker: RankerModel | None) -> dict[str, np.ndarray]:
    out = {"success_only": np.nan_to_num(block.scores[..., SUCCESS], nan=-1.0),
           "blend": rank(block, blend_weights=blend_weights)[0]}
    if ranker is not None:
        out["ranker"] = rank(block, ranker=ranker, blend_weights=blend_weights)[0]
    return out


def candidate_blocks(c: Components, rows: np.ndarray, n_candidates: int):
    """The candidate blocks of `rows`, one chunk of students at a time (chunk_size)."""
    chunk = chunk_size(len(c.open_items))
    for start in range(0, len(rows), chunk):
        yield candidate_block(c, rows[start:start + chunk], n_candidates)


class WindowMetrics:
    """`evaluate_window` one block at a time, so that one pass over a window's candidate blocks
    can also feed the fairness evaluation and the ranker's training rows (a block is the costly
    part: whole-catalogue scores for every student of the chunk)."""

    def __init__(self, c: Components, relevant: sp.csr_matrix, *, k: int, n_candidates: int, blend_weights: dict,
                 ranker: RankerModel | None):
        self.c, self.relevant, self.k, self.n_candidates = c, relevant, k, n_candidates
        self.blend_weights, self.ranker = blend_weights, ranker
        self.tops: dict[str, list] = {}
        self.rows: list[np.ndarray] = []
        self.candidate_recall: list[np.ndarray] = []

    def add(self, block: CandidateBlock) -> dict[str, np.ndarray]:
        """Adds one block; returns its pipeline scores (`pipeline_scores`) for other consumers."""
        c, k, part = self.c, self.k, block.rows
        self.rows.append(part)
        pop = np.where(np.isinf(block.content_full), -np.inf, c.collaborative.popularity[None, :])
        for name, full in (("popularity", pop), ("content", block.content_full), ("collaborative", block.collab_full)):
            self.tops.setdefault(name, []).append((top_k(full, k), None))
        scores = pipeline_scores(block, self.blend_weights, self.ranker)
        for name, s in scores.items():
            self.tops.setdefault(name, []).append(_pipeline_top_k(block, s, k))
        hits = (gather(self.relevant, part, block.items) > 0) & block.valid
        n_rel = np.asarray(self.relevant[part].sum(axis=1)).ravel()
        self.candidate_recall.append(hits.sum(axis=1) / np.maximum(n_rel, 1))
        return scores

    def result(self, groups: dict[str, np.ndarray], ndcg_per_student: dict | None = None) -> dict:
        """Metrics per model; `ndcg_per_student`, when given, receives each model's NDCG@k per student."""
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0, dtype=np.int64)
        rel, n_rankable = self.relevant[rows], int(self.c.open_items.sum())
        results = {}
        for name, parts in self.tops.items():
            topk = np.vstack([t for t, _ in parts])
            valid = None if parts[0][1] is None else np.vstack([v for _, v in parts])
            m = ranking_metrics(topk, rel, n_rankable, valid)
            per_student = m.pop("_per_student")
            if ndcg_per_student is not None:
                ndcg_per_student[name] = per_student["ndcg"]
            m["groups"] = group_breakdown(per_student, {a: v[rows] for a, v in groups.items()}, self.k)
            results[name] = m
        # Candidate recall: the ceiling that any re-ranking of the retrieved candidates can reach.
        results["candidates"] = {"recall@candidates": float(np.mean(np.concatenate(self.candidate_recall))),
                                 "per_student": int(2 * self.n_candidates)}
        return results


def evaluate_window(c: Components, rows: np.ndarray, relevant: sp.csr_matrix, *, k: int, n_candidates: int,
                    blend_weights: dict, ranker: RankerModel | None, groups: dict[str, np.ndarray],
                    progress=None, ndcg_per_student: dict | None = None) -> dict:
    """Metrics per model for students `rows` whose relevant items (binary, students x items) are given;
    `ndcg_per_student`, when given, receives each model's NDCG@k per student (for intervals)."""
    metrics = WindowMetrics(c, relevant, k=k, n_candidates=n_candidates, blend_weights=blend_weights, ranker=ranker)
    for block in candidate_blocks(c, rows, n_candidates):
        metrics.add(block)
        if progress:
            progress(len(block.rows))
    return metrics.result(groups, ndcg_per_student)


@dataclass
class TrainingRows:
    """A block's ranker training rows: features, graded labels, group sizes (students with a
    positive among two or more candidates), and optionally the slim block for blend tuning."""
    x: np.ndarray
    y: np.ndarray
    sizes: np.ndarray
    block: tuple | None = None  # (CandidateBlock without the dense full-catalogue scores, labels)


def training_rows(block: CandidateBlock, graded: sp.csr_matrix, keep_block: bool = True) -> TrainingRows:
    labels = np.where(block.valid, gather(graded, block.rows, block.items), 0)
    x = ranker_features(block.scores[block.valid], block.pair)
    sizes = block.valid.sum(axis=1)
    keep_rows = (labels.max(axis=1) > 0) & (sizes > 1)
    keep_flat = np.repeat(keep_rows, sizes)
    slim = (dataclasses.replace(block, content_full=None, collab_full=None), labels) if keep_block else None
    return TrainingRows(x[keep_flat], labels[block.valid][keep_flat], sizes[keep_rows], slim)


def stack_training_rows(parts: list[TrainingRows]):
    """(x, y, group sizes, slim blocks) of all parts, in order."""
    return (np.vstack([p.x for p in parts]), np.concatenate([p.y for p in parts]),
            np.concatenate([p.sizes for p in parts]), [p.block for p in parts if p.block is not None])


def ranker_training_data(c: Components, rows: np.ndarray, graded: sp.csr_matrix, n_candidates: int):
    """Features, graded labels and group sizes of the candidates of students with a positive among
    them, and the slim blocks with their labels (blend tuning)."""
    return stack_training_rows([training_rows(b, graded) for b in candidate_blocks(c, rows, n_candidates)])
