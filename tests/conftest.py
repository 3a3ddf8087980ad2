"""Test-session set-up.

- Generated protobuf code must exist and be current before anything imports it.
- `small_system`: one small generated dataset (with its SQLite catalog) and trained, registered
  bundles, shared by every test that needs real models (training takes ~30 s; once per session).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from protos.generate import generate

generate()
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@dataclass
class SmallSystem:
    root: Path
    data: Path
    bundles: Path
    runs: Path
    report: dict

    @property
    def catalog(self) -> Path:
        return self.data / "catalog.db"


@pytest.fixture(scope="session")
def small_system(tmp_path_factory) -> SmallSystem:
    from models.data.generate import generate as generate_data
    from models.train import TrainConfig, train

    root = tmp_path_factory.mktemp("small_system")
    data = root / "data"
    generate_data(data, students=1500, internships=300, seed=7, progress=False, catalog=True)
    cfg = TrainConfig(data_dir=data, bundles_dir=root / "bundles", runs_dir=root / "runs", search_budget=1,
                      progress=False,
                      als_grid=[{"factors": 16, "regularization": 0.05, "alpha": 1.0, "iterations": 10}],
                      ease_grid=[{"lambda": 200.0}])
    report = train(cfg)
    return SmallSystem(root, data, cfg.bundles_dir, cfg.runs_dir, report)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
