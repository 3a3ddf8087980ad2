"""The success model as the success service serves it: the bundle turned into a warm model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.components.features import FeatureSpace
from models.components.success import SuccessModel
from services.common.items import ItemIndex


@dataclass
class SuccessRuntime:
    model: SuccessModel
    space: FeatureSpace
    index: ItemIndex

    @classmethod
    def from_bundle(cls, bundle) -> "SuccessRuntime":
        space = FeatureSpace.from_arrays(bundle.arrays)
        runtime = cls(SuccessModel.from_bundle(bundle), space, ItemIndex(space.items.ids))
        runtime.model.predict(np.zeros((1, len(runtime.model.reference)), dtype=np.float32))  # warm up
        space.items.warm()
        return runtime
