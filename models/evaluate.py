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

from models.collaborative import CollaborativeModel
from models.content import ContentModel
from models.features import FeatureSpace, StudentTable, pair_features
from models.metrics import gather, group_breakdown, ranking_metrics, top_k
from models.pipeline import COLLABORATIVE, CONTENT, POPULARITY, SUCCESS, Candidates, best_k, rank, top_n_rows
from models.ranker import RankerModel, ranker_features
from models.success import SuccessModel

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


def evaluate_window(c: Components, rows: np.ndarray, relevant: sp.csr_matrix, *, k: int, n_candidates: int,
                    blend_weights: dict, ranker: RankerModel | None, groups: dict[str, np.ndarray],
                    progress=None, ndcg_per_student: dict | None = None) -> dict:
    """Metrics per model for students `rows` whose relevant items (binary, students x items) are given;
    `ndcg_per_student`, when given, receives each model's NDCG@k per student (for intervals)."""
    n_rankable = int(c.open_items.sum())
    chunk = chunk_size(len(c.open_items))
    tops: dict[str, list] = {}
    candidate_recall = []
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        block = candidate_block(c, part, n_candidates)
        pop = np.where(np.isinf(block.content_full), -np.inf, c.collaborative.popularity[None, :])
        for name, full in (("popularity", pop), ("content", block.content_full), ("collaborative", block.collab_full)):
            tops.setdefault(name, []).append((top_k(full, k), None))
        for name, scores in pipeline_scores(block, blend_weights, ranker).items():
            tops.setdefault(name, []).append(_pipeline_top_k(block, scores, k))
        hits = (gather(relevant, part, block.items) > 0) & block.valid
        n_rel = np.asarray(relevant[part].sum(axis=1)).ravel()
        candidate_recall.append(hits.sum(axis=1) / np.maximum(n_rel, 1))
        if progress:
            progress(len(part))
    rel = relevant[rows]
    results = {}
    for name, parts in tops.items():
        topk = np.vstack([t for t, _ in parts])
        valid = None if parts[0][1] is None else np.vstack([v for _, v in parts])
        m = ranking_metrics(topk, rel, n_rankable, valid)
        per_student = m.pop("_per_student")
        if ndcg_per_student is not None:
            ndcg_per_student[name] = per_student["ndcg"]
        m["groups"] = group_breakdown(per_student, {a: v[rows] for a, v in groups.items()}, k)
        results[name] = m
    # Candidate recall: the ceiling that any re-ranking of the retrieved candidates can reach.
    results["candidates"] = {"recall@candidates": float(np.mean(np.concatenate(candidate_recall))),
                             "per_student": int(2 * n_candidates)}
    return results


def ranker_training_data(c: Components, rows: np.ndarray, graded: sp.csr_matrix, n_candidates: int):
    """Features, graded labels and group sizes of the candidates of students with a positive among them."""
    chunk = chunk_size(len(c.open_items))
    xs, ys, groups, blocks = [], [], [], []
    for start in range(0, len(rows), chunk):
        block = candidate_block(c, rows[start:start + chunk], n_candidates)
        labels = np.where(block.valid, gather(graded, block.rows, block.items), 0)
        x = ranker_features(block.scores[block.valid], block.pair)
        sizes = block.valid.sum(axis=1)
        keep_rows = (labels.max(axis=1) > 0) & (sizes > 1)
        keep_flat = np.repeat(keep_rows, sizes)
        xs.append(x[keep_flat])
        ys.append(labels[block.valid][keep_flat])
        groups.append(sizes[keep_rows])
        # keep what blend tuning needs, not the dense full-catalogue score blocks
        blocks.append((dataclasses.replace(block, content_full=None, collab_full=None), labels))
    return np.vstack(xs), np.concatenate(ys), np.concatenate(groups), blocks
