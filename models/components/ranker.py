"""Ranker: LightGBM lambdarank over component scores and non-protected pair features.

A ranker bundle serves the learned ranker or, when training found it no better, the static blend
(models/components/scores.py). Both rank one student's candidate list at a time; a missing component's
score is NaN (LightGBM routes NaN natively; the blend treats it as zero weight).

Bundle layout (`save` / `from_bundle`; format in models/bundle/format.py):
- arrays: the feature space (`features.FeatureSpace.arrays()`): `item_*`, every internship's
  columns, and `vocab_skills`, `vocab_sectors`, `vocab_districts`;
- objects: `model` (the fitted LightGBM LGBMRanker, a pickle);
- documents: `model` (`params`, `features` -- checked against FEATURES on load --,
  `blend_weights`, `ranking`: "ranker" or "blend", what the rank stage serves).
"""

from __future__ import annotations

import numpy as np
from lightgbm import LGBMRanker

from models.bundle.format import Bundle, BundleRef
from models.bundle.writing import write_bundle
from models.components.features import PAIR_FEATURES
from models.components.scores import COMPONENT_SCORES, blend_terms

COMPONENT = "ranker"
# What the learned ranker orders a list by: the retrievers' scores. The success probability is not
# a ranker feature: it carried well under 1 % of the gain (its pair features are the ranker's own,
# and its student terms are constant within a list), and predicting it for every candidate cost a
# call per request; the gateway predicts it for the final k (shown), or for every candidate only
# when the ranker is down and the static blend, which does use it, orders the list.
RANKED_SCORES = COMPONENT_SCORES[:3]
# Student-only columns are constant inside one list, so they cannot order it: left out.
RANKER_PAIR_FEATURES = [f for f in PAIR_FEATURES if f not in ("cgpa", "college_tier", "education_level")]
FEATURES = RANKED_SCORES + RANKER_PAIR_FEATURES
_PAIR_COLUMNS = [PAIR_FEATURES.index(f) for f in RANKER_PAIR_FEATURES]


def ranker_features(component_scores: np.ndarray, pair: np.ndarray) -> np.ndarray:
    """(n, len(FEATURES)) from (n, 4) component scores (NaN = unavailable; the success column is not
    used) and (n, |PAIR_FEATURES|)."""
    ranked = np.asarray(component_scores, np.float32)[:, :len(RANKED_SCORES)]
    return np.hstack([ranked, np.asarray(pair, np.float32)[:, _PAIR_COLUMNS]])


class PathAttribution:
    """Exact additive per-feature shares of a LightGBM model's score, cheap enough for serving.

    Each tree's output is split along the path a row takes: every split hands its feature the
    change in the node's expected value (child minus parent), so a tree's shares sum to its leaf
    value minus its root value, and bias + sum(shares) is the model's raw score exactly (the
    decomposition of Saabas, as in `treeinterpreter`). A leaf's shares depend only on its path,
    so they are tabulated once per leaf; serving asks LightGBM for the leaf each row reaches
    (`pred_leaf`) and adds up the table's rows. TreeSHAP (`pred_contrib`) is the
    order-independent refinement, at a much higher cost per row.
    """

    def __init__(self, booster, n_features: int):
        tables, bias = [], 0.0
        for tree in booster.dump_model()["tree_info"]:
            table = np.zeros((max(int(tree["num_leaves"]), 1), n_features))
            root = tree["tree_structure"]
            bias += _node_value(root)
            stack = [(root, np.zeros(n_features))]
            while stack:
                node, shares = stack.pop()
                if "split_feature" not in node:
                    table[int(node.get("leaf_index", 0))] = shares
                    continue
                if node.get("decision_type", "<=") != "<=":
                    raise ValueError("categorical splits are not supported")
                for child in (node["left_child"], node["right_child"]):
                    more = shares.copy()
                    more[int(node["split_feature"])] += _node_value(child) - _node_value(node)
                    stack.append((child, more))
            tables.append(table)
        self.booster, self.bias, self.n_features = booster, bias, n_features
        self.offsets = np.cumsum([0] + [len(t) for t in tables[:-1]]).astype(np.int64)
        self.leaf_shares = np.vstack(tables)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(n, n_features + 1): shares per feature, the bias last; each row sums to the raw score."""
        leaves = self.booster.predict(x, pred_leaf=True, num_threads=1)  # (rows, trees)
        # Each row's reached leaves' shares, gathered tree-major so that the sum over trees adds
        # whole (rows, features) slabs: cheaper than a sparse one-hot product or a row-major gather.
        reached = np.take(self.leaf_shares, leaves.T + self.offsets[:, None], axis=0)
        out = np.empty((len(leaves), self.n_features + 1))
        out[:, :-1] = reached.sum(axis=0)
        out[:, -1] = self.bias
        return out


def _node_value(node: dict) -> float:
    return float(node["leaf_value"] if "split_feature" not in node else node["internal_value"])


RANKINGS = ("ranker", "blend")


class RankerModel:
    """The learned ranker, with the static blend's tuned weights beside it.

    `ranking` is what this bundle serves as the rank stage: "ranker" (the learned model) or
    "blend" when training found that the learned ranker did not beat the blend beyond noise.
    """

    def __init__(self, model: LGBMRanker, params: dict, blend_weights: dict[str, float], ranking: str = "ranker"):
        if ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {RANKINGS}, not {ranking!r}")
        self.model, self.params, self.blend_weights, self.ranking = model, params, blend_weights, ranking
        self._attribution: PathAttribution | None = None  # built on first use (walks the tree dump)

    @classmethod
    def fit(cls, x: np.ndarray, labels: np.ndarray, group_sizes: np.ndarray, params: dict,
            blend_weights: dict[str, float], seed: int = 0) -> "RankerModel":
        # n_jobs=1: OpenMP threads busy-wait, and on a shared 2-core machine that was 10x slower.
        model = LGBMRanker(objective="lambdarank", random_state=seed, verbose=-1, n_jobs=1,
                           **params)
        model.fit(x, labels, group=group_sizes)  # columns are FEATURES, in order
        return cls(model, params, blend_weights)

    def predict(self, x: np.ndarray) -> np.ndarray:
        # The booster directly: the scikit-learn wrapper adds input validation on every call. One
        # thread: serving batches are a few hundred rows, where thread start-up costs more than it
        # saves (and evaluation runs many batches already).
        return self.model.booster_.predict(np.asarray(x, dtype=np.float32), num_threads=1).astype(np.float32)

    def score(self, component_scores: np.ndarray, pair: np.ndarray) -> np.ndarray:
        """The rank stage: one relevance score per candidate from its (n, 4) component scores
        (NaN = unavailable) and its pair features."""
        return self.predict(ranker_features(component_scores, pair))

    def predict_with_contributions(self, x: np.ndarray, method: str = "path") -> tuple[np.ndarray, np.ndarray]:
        """`predict` and `contributions` in one pass over the trees: a row's score is the sum of
        its contributions (bias included), so the model is evaluated once, not twice."""
        contributions = self.contributions(x, method)
        return contributions.sum(axis=1).astype(np.float32), contributions

    def rank_list(self, component_scores: np.ndarray, pair: np.ndarray, contributions: str | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        """The rank stage for one student's list, as this bundle serves it: (scores, each row's
        additive split of its score over `split_names` with the bias last, or None when not
        asked). Under "blend" the split is the blend's terms."""
        if self.ranking == "blend":
            terms = blend_terms(component_scores, self.blend_weights)
            split = np.hstack([terms, np.zeros((len(terms), 1))]) if contributions else None
            return terms.sum(axis=-1).astype(np.float32), split
        features = ranker_features(component_scores, pair)
        if contributions:
            return self.predict_with_contributions(features, contributions)
        return self.predict(features), None

    @property
    def split_names(self) -> list[str]:
        """What `rank_list`'s split of a score is over: the blend's terms or the ranker's features."""
        return list(COMPONENT_SCORES) if self.ranking == "blend" else list(FEATURES)

    def contributions(self, x: np.ndarray, method: str = "path") -> np.ndarray:
        """(n, len(FEATURES) + 1): each feature's exact additive share of each row's score, the bias
        last; a row sums to `predict` of that row.

        `path`: PathAttribution along each row's decision paths (tabulated per leaf, so a row
        costs one leaf lookup per tree). `shap`: TreeSHAP (LightGBM's pred_contrib), the
        consistent allocation, far costlier per row. The README compares the two.
        """
        if method == "shap":
            return self.model.predict(x, pred_contrib=True, num_threads=1)
        if method != "path":
            raise ValueError(f"unknown contribution method {method!r}: use 'shap' or 'path'")
        if self._attribution is None:
            self._attribution = PathAttribution(self.model.booster_, len(FEATURES))
        return self._attribution(x)

    def feature_importance(self) -> dict[str, float]:
        gain = self.model.booster_.feature_importance(importance_type="gain")
        total = max(float(gain.sum()), 1e-9)
        return {f: round(float(g) / total, 4) for f, g in sorted(zip(FEATURES, gain), key=lambda t: -t[1])}

    def save(self, root, metadata: dict, space_arrays: dict) -> BundleRef:
        return write_bundle(root, COMPONENT, arrays=space_arrays, objects={"model": self.model},
                            documents={"model": {"params": self.params, "features": FEATURES,
                                                 "blend_weights": self.blend_weights, "ranking": self.ranking}},
                            metadata=metadata, pickled_libraries=("lightgbm", "scikit-learn"))

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "RankerModel":
        doc = bundle.documents["model"]
        if doc["features"] != FEATURES:
            raise ValueError("ranker bundle was trained on another feature schema; retrain it")
        return cls(bundle.objects["model"], doc["params"], doc["blend_weights"], doc.get("ranking", "ranker"))
