"""The content model as the content service serves it: the bundle turned into a warm model, the
profile's TF-IDF vector (reused from a previous Retrieve when it came back), closed and excluded
internships."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.components.content import ContentModel, Embedding, SkillExplainer, profile_text
from models.components.features import FeatureSpace
from pmis.v1 import common_pb2
from services.common import items
from services.common.items import ItemIndex
from services.common.validation import Violations


@dataclass
class ContentRuntime:
    model: ContentModel
    space: FeatureSpace
    index: ItemIndex
    skills: SkillExplainer
    content_hash: str = ""

    @classmethod
    def from_bundle(cls, bundle) -> "ContentRuntime":
        model, space = ContentModel.from_bundle(bundle), FeatureSpace.from_arrays(bundle.arrays)
        runtime = cls(model, space, ItemIndex(bundle.arrays["item_ids"]),
                      SkillExplainer(model, space.skills, space.items.skills), bundle.ref.content_hash)
        runtime.model.score(["warm up"])  # first call pays the vectoriser's lazy set-up, not a client
        return runtime

    def vector(self, profile, given: common_pb2.StudentVector, v: Violations) -> Embedding:
        """The profile's TF-IDF vector: the one a previous Retrieve of this bundle returned, or a
        new embedding."""
        if given.content_hash != self.content_hash or not given.values:
            return self.model.embed_rows([text_of(profile)])
        width = self.model.item_matrix.shape[1]
        indices = np.asarray(given.indices, dtype=np.int32)
        values = np.asarray(given.values, dtype=np.float32)
        if len(indices) != len(values) or len(values) > width or ((indices < 0) | (indices >= width)).any() \
                or not np.isfinite(values).all():
            v.add("student_vector", "indices and values must pair up, within the vocabulary, finite")
            v.raise_if_any()
        return Embedding(values, indices, np.array([0, len(values)]), (1, width))

    def vector_message(self, vector: Embedding) -> common_pb2.StudentVector:
        return common_pb2.StudentVector(content_hash=self.content_hash, indices=vector.indices.tolist(),
                                        values=vector.data.tolist())

    def excluded(self, ids, open_at: int) -> np.ndarray | None:
        return items.excluded(self.index, ids, self.space.items.deadline, open_at)


def text_of(profile) -> str:
    # Normalised like the skill vocabulary, so " SQL " meets the internship's "skill_sql" token.
    return profile_text([s.strip().lower() for s in profile.skills], profile.field, list(profile.preferred_sectors))
