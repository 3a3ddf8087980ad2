"""Evaluate the active (champion) bundles on an external held-out interactions file.

Users bring their own split: a file of later interactions in the contract's format. Each
student's saves/applies in it are the relevant items; whatever the student interacted with in
the training data is excluded. The bundles are loaded and verified exactly as the servers load
them, and scored with the same pipeline as the training-time evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.bundle.reading import load_bundle
from models.components.collaborative import CollaborativeModel
from models.components.content import ContentModel, profile_text
from models.data.contract import DataError, ValidationReport, _check_table, _read_raw, load_dataset
from models.training.evaluate import Components, evaluate_window
from models.components.features import FeatureSpace
from models.components.ranker import RankerModel
from models.bundle.registry import open_registry
from models.components.success import SuccessModel
from models.training.split import GROUP_ATTRIBUTES, positions

log = logging.getLogger("pmis.holdout")


def load_champions(bundles_dir: Path) -> dict:
    """Verified champion bundles per component (missing components are simply absent)."""
    registry = open_registry(bundles_dir)
    out = {}
    for component in registry.components():
        try:
            row = registry.resolve(component, "champion")
        except KeyError:
            continue
        out[component] = load_bundle(Path(row["path"]))
    return out


def read_holdout(path: Path) -> pd.DataFrame:
    report = ValidationReport()
    df = _read_raw(Path(path))
    _check_table("interactions", df, Path(path).name, report)
    if report.errors:
        raise DataError(report)
    return df


def components_from_bundles(bundles: dict, ds, open_items: np.ndarray | None = None) -> Components:
    """The served models (one bundle per component) over a dataset in the contract's format, as the
    offline pipeline sees them: every interaction in the dataset counts as seen."""
    content = ContentModel.from_bundle(bundles["content"])
    collab = CollaborativeModel.from_bundle(bundles["collaborative"])
    success = SuccessModel.from_bundle(bundles["success"]) if "success" in bundles else None
    space = FeatureSpace.from_arrays(bundles["ranker"].arrays)
    student_ids = ds.students["student_id"].astype(str).to_numpy()
    if not np.array_equal(np.asarray(collab.user_ids), student_ids):
        raise RuntimeError("the collaborative bundle was trained on another students table; retrain first")
    item_index = pd.Index(np.asarray(space.items.ids))
    s_index = pd.Index(student_ids)
    seen = sp.csr_matrix((np.ones(len(ds.interactions), np.float32),
                          (positions(s_index, ds.interactions["student_id"]),
                           positions(item_index, ds.interactions["internship_id"]))),
                         shape=(len(student_ids), len(item_index)))
    texts = [profile_text(s, f, p) for s, f, p in zip(ds.students["skills"], ds.students["field"],
                                                     ds.students["preferred_sectors"])]
    return Components(content, collab, success, space, space.students(ds.students), texts,
                      (seen > 0).astype(np.float32).tocsr(),
                      np.ones(len(item_index), dtype=bool) if open_items is None else open_items)


def evaluate_holdout(data_dir: Path, bundles_dir: Path, holdout: Path, k: int = 10, n_candidates: int = 100) -> dict:
    ds = load_dataset(data_dir)
    bundles = load_champions(bundles_dir)
    missing = {"content", "collaborative", "ranker"} - set(bundles)
    if missing:
        raise RuntimeError(f"no champion bundle for {', '.join(sorted(missing))}; run `pmis train` first")
    for c, b in bundles.items():
        if b.ref.data_version != ds.data_version:
            log.warning("%s bundle was trained on data version %s, the dataset is %s", c, b.ref.data_version,
                        ds.data_version)
    comp = components_from_bundles(bundles, ds)
    ranker = RankerModel.from_bundle(bundles["ranker"])
    item_index = pd.Index(np.asarray(comp.space.items.ids))
    s_index = pd.Index(ds.students["student_id"].astype(str).to_numpy())
    n_s, n_i = len(s_index), len(item_index)
    seen = comp.seen
    held = read_holdout(holdout)
    held = held[held["event"].isin(["save", "apply"])]
    hs = s_index.get_indexer(held["student_id"].astype(str))
    hi = item_index.get_indexer(held["internship_id"].astype(str))
    known = (hs >= 0) & (hi >= 0)
    relevant = sp.csr_matrix((np.ones(known.sum(), np.float32), (hs[known], hi[known])), shape=(n_s, n_i))
    relevant.data[:] = 1.0
    relevant = relevant - relevant.multiply(seen > 0)
    relevant.eliminate_zeros()
    rows = np.flatnonzero(relevant.getnnz(axis=1) > 0)

    groups = {a: ds.students[a].astype(str).to_numpy() for a in GROUP_ATTRIBUTES if a in ds.students}
    ranking = evaluate_window(comp, rows, relevant.tocsr(), k=k, n_candidates=n_candidates,
                              blend_weights=ranker.blend_weights, ranker=ranker, groups=groups)
    return {"students": int(len(rows)), "unknown_rows_skipped": int((~known).sum()), "ranking": ranking,
            "bundles": {c: {"version": b.ref.version, "content_hash": b.ref.content_hash} for c, b in bundles.items()}}
