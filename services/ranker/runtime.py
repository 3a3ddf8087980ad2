"""The ranker as the ranker service serves it: the bundle turned into a warm model, and one
student's candidates ranked (with each score's split when asked)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.components.features import FeatureSpace, pair_features
from models.components.ranker import RankerModel
from services.common.items import ItemIndex


@dataclass
class RankerRuntime:
    model: RankerModel
    space: FeatureSpace
    index: ItemIndex
    contributions: str = "path"  # "path" (default) or "shap" (TreeSHAP); see RankerModel.contributions

    @classmethod
    def from_bundle(cls, bundle, contributions: str = "path") -> "RankerRuntime":
        space = FeatureSpace.from_arrays(bundle.arrays)
        runtime = cls(RankerModel.from_bundle(bundle), space, ItemIndex(space.items.ids), contributions)
        warm = np.zeros((1, len(runtime.model.model.feature_name_)), dtype=np.float32)
        runtime.model.predict(warm)
        runtime.model.contributions(warm, contributions)  # any set-up now, not on a client's call
        space.items.warm()
        return runtime

    @property
    def cheap_to_explain(self) -> bool:
        """Whether splitting every candidate's score costs little beside ranking them: the path
        method, or the blend (its terms are the split)."""
        return self.contributions == "path" or self.model.ranking == "blend"

    def rank(self, student_columns, ids: list[str], component: np.ndarray,
             explain: bool) -> tuple[np.ndarray, np.ndarray]:
        """(score per candidate, and when `explain` each score's split: one column per feature plus
        the bias). `component` is the (n, 4) component scores (NaN = unavailable). Internships this
        bundle has never seen rank last rather than failing the call: no features, only the
        fallback score."""
        positions = self.index.lookup(ids)
        known = positions >= 0
        if known.all():  # the usual call: nothing to place after the ranked candidates
            return self._rank_known(student_columns, positions, component, explain)
        scores = np.full(len(ids), np.nan, dtype=np.float32)
        contrib = np.zeros((len(ids), len(self.model.split_names) + 1))
        if known.any():
            scores[known], contrib[known] = self._rank_known(student_columns, positions[known], component[known],
                                                             explain)
        scores[~known] = (float(np.nanmin(scores)) if known.any() else 0.0) - 1.0
        contrib[~known, -1] = scores[~known]
        return scores, contrib

    def _rank_known(self, student_columns, positions: np.ndarray, component: np.ndarray,
                    explain: bool) -> tuple[np.ndarray, np.ndarray]:
        """`rank` for candidates that are all in this bundle (`positions` into its arrays)."""
        student = self.space.students(student_columns)
        pair = pair_features(student, np.zeros(len(positions), dtype=np.int64), self.space.items, positions)
        scores, split = self.model.rank_list(component, pair, self.contributions if explain else None)
        if split is None:
            split = np.zeros((len(positions), len(self.model.split_names) + 1))
        return scores, split
