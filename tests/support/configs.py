"""The small training configuration of the tests: the two grid points as the whole collaborative
search, one success-search draw."""

from __future__ import annotations

from pathlib import Path

from models.training.train import TrainConfig


def small_train_config(data: Path, root: Path, **overrides) -> TrainConfig:
    """Bundles in `root/bundles`, reports in `root/runs`; quick enough to train in the suite."""
    settings = dict(data_dir=data, bundles_dir=root / "bundles", runs_dir=root / "runs", search_budget=1,
                    progress=False,
                    als_grid=[{"factors": 16, "regularization": 0.05, "alpha": 1.0, "iterations": 10}],
                    ease_grid=[{"lambda": 200.0}], collab_trials=2)
    settings.update(overrides)
    return TrainConfig(**settings)
