"""A training job's configuration: checked and normalised once, when the job is created.

``normalise_config`` takes what the TrainingConfig message says (StartTraining, CheckTriggers) or
what `pmis retrain` builds from its flags, fills in the defaults and names every field that is
wrong; the normalised form is what the job table stores and what ``train_config`` turns into the
trainer's own configuration (models.training.train.TrainConfig) when the job runs.
"""

from __future__ import annotations

import math
from pathlib import Path

from models.components import COMPONENTS

DEFAULTS = {"search_budget": 4, "cv_folds": 3, "valid_fraction": 0.15, "test_fraction": 0.15, "margin": 0.0,
            "seed": 0, "max_eval_students": 20_000}
MAX_COLLAB_TRIALS = 200

# (field path relative to the config, what is wrong with it)
Violations = list[tuple[str, str]]


def collab_trials_problem(trials: int) -> str | None:
    """Why a collaborative search budget is refused (the CLI's flag and StartTraining alike)."""
    return None if 1 <= trials <= MAX_COLLAB_TRIALS else f"must be in 1..{MAX_COLLAB_TRIALS}, got {trials}"


def normalise_config(raw: dict, default_data: Path, data_roots: list[Path]) -> tuple[dict, Violations]:
    """Validate a training configuration; returns (normalised config, field violations).

    ``raw`` mirrors the TrainingConfig message (nested ``success``, ``split``,
    ``auto_activation``); zero/empty values mean "default". Violation paths are relative to
    the config (``components[1]``, ``split.valid_fraction`` ...).
    """
    v: Violations = []
    components, explicit_components = _components(v, raw)
    data_path = _data_source(v, raw, default_data, data_roots,
                             needs_outcomes=explicit_components and "success" in components)
    algorithms, budget = _success_search(v, raw)
    collab_trials = _collab_trials(v, raw)
    folds = _cv_folds(v, raw)
    split = _split(v, raw)
    auto_activate, margin = _auto_activation(v, raw)
    seed, max_eval, description = _run_settings(v, raw)
    config = {"components": components, "data_source": str(data_path), "success_algorithms": algorithms,
              "search_budget": budget, "collab_trials": collab_trials, "cv_folds": folds, **split,
              "auto_activate": auto_activate, "margin": margin, "seed": seed,
              "max_eval_students": max_eval, "description": description}
    return config, v


def _check_choices(v: Violations, field: str, values: list, allowed, noun: str) -> None:
    """A violation per value that is unknown or repeated, at its index (`field[i]`)."""
    for i, x in enumerate(values):
        if x not in allowed:
            v.append((f"{field}[{i}]", f"unknown {noun} {x!r}; choose from {', '.join(allowed)}"))
        elif x in values[:i]:
            v.append((f"{field}[{i}]", f"{x!r} is listed twice"))


def _components(v: Violations, raw: dict) -> tuple[list[str], bool]:
    """The components to train in canonical order (all when none are named), and whether they were named."""
    components = list(raw.get("components") or [])
    _check_choices(v, "components", components, COMPONENTS, "component")
    if not components:
        return list(COMPONENTS), False
    return [c for c in COMPONENTS if c in components], True


def _has_table(folder: Path, table: str) -> bool:
    return any((folder / f"{table}.{ext}").exists() for ext in ("parquet", "csv"))


def _data_source(v: Violations, raw: dict, default_data: Path, data_roots: list[Path], needs_outcomes: bool) -> Path:
    """The data folder, resolved; it must be inside one of the trainer's data roots (a client
    must not point the trainer at arbitrary folders) and hold the tables the job needs."""
    data = str(raw.get("data_source") or "").strip()
    if len(data) > 1024:
        v.append(("data_source", "must be at most 1024 characters"))
        return Path(data)
    resolved = (Path(data) if data else Path(default_data)).resolve()
    roots = [Path(r).resolve() for r in data_roots]
    if not any(resolved == r or r in resolved.parents for r in roots):
        v.append(("data_source", f"must be inside one of the trainer's data roots: "
                                 f"{', '.join(str(r) for r in roots)}"))
    elif not resolved.exists():
        v.append(("data_source", f"{resolved} does not exist"))
    elif not resolved.is_dir():
        v.append(("data_source", f"{resolved} is not a folder"))
    elif not _has_table(resolved, "students"):
        v.append(("data_source", f"{resolved} holds no students table (students.parquet or students.csv)"))
    elif needs_outcomes and not _has_table(resolved, "outcomes"):
        v.append(("components", "success needs an outcomes table in the data source, which has none"))
    return resolved


def _success_search(v: Violations, raw: dict) -> tuple[list[str], int]:
    """The success predictor's candidate algorithms (none named: the trainer's choice) and search budget."""
    from models.components.success import ALGORITHMS

    success = raw.get("success") or {}
    algorithms = list(success.get("algorithms") or [])
    _check_choices(v, "success.algorithms", algorithms, ALGORITHMS, "algorithm")
    budget = int(success.get("search_budget") or 0) or DEFAULTS["search_budget"]
    if not 1 <= budget <= 50:
        v.append(("success.search_budget", f"must be in 1..50, got {budget}"))
    return algorithms, budget


def _collab_trials(v: Violations, raw: dict) -> int | None:
    """The collaborative search's trials; None: scaled to the data."""
    collab_trials = int((raw.get("collaborative") or {}).get("trials") or 0) or None
    if collab_trials is not None and (problem := collab_trials_problem(collab_trials)):
        v.append(("collaborative.trials", problem))
    return collab_trials


def _cv_folds(v: Violations, raw: dict) -> int:
    folds = int(raw.get("cv_folds") or 0) or DEFAULTS["cv_folds"]
    if not 3 <= folds <= 10:
        v.append(("cv_folds", f"must be in 3..10, got {folds}"))
    return folds


def _split(v: Violations, raw: dict) -> dict:
    """How the data is split: by fractions (in time, or at random per student) or at two cutoffs."""
    split = raw.get("split") or {}
    vf, tf = float(split.get("valid_fraction") or 0), float(split.get("test_fraction") or 0)
    train_until, valid_until = split.get("train_until"), split.get("valid_until")
    cutoffs = train_until is not None or valid_until is not None
    if cutoffs and (vf or tf):
        v.append(("split", "set either the fractions or the cutoffs, not both"))
    random_split = bool(split.get("random"))
    if random_split and cutoffs:
        v.append(("split.random", "a random split takes the fractions, not cutoffs"))
    _check_cutoffs(v, train_until, valid_until)
    vf = vf or DEFAULTS["valid_fraction"]
    tf = tf or DEFAULTS["test_fraction"]
    _check_fractions(v, vf, tf)
    return {"valid_fraction": vf, "test_fraction": tf,
            "train_until": None if train_until is None else int(train_until),
            "valid_until": None if valid_until is None else int(valid_until), "split_random": random_split}


def _check_cutoffs(v: Violations, train_until, valid_until) -> None:
    if (train_until is None) != (valid_until is None):
        missing = "valid_until" if valid_until is None else "train_until"
        v.append((f"split.{missing}", "required when the other cutoff is set"))
    elif train_until is not None and int(train_until) >= int(valid_until):
        v.append(("split.valid_until", "must be later than split.train_until"))


def _check_fractions(v: Violations, vf: float, tf: float) -> None:
    for name, value in (("valid_fraction", vf), ("test_fraction", tf)):
        if not (math.isfinite(value) and 0.05 <= value <= 0.4):
            v.append((f"split.{name}", f"must be in 0.05..0.4, got {value}"))
    if math.isfinite(vf + tf) and vf + tf > 0.6:
        v.append(("split", f"valid_fraction + test_fraction must be at most 0.6, got {vf + tf:.2f}"))


def _auto_activation(v: Violations, raw: dict) -> tuple[bool, float]:
    """Whether the job activates what it trains, and by what margin a version must beat the champion."""
    auto = raw.get("auto_activation") or {}
    margin = float(auto.get("margin") or 0.0)
    if not (math.isfinite(margin) and 0.0 <= margin <= 1.0):
        v.append(("auto_activation.margin", f"must be in 0..1, got {margin}"))
    return bool(auto.get("enabled")), margin


def _run_settings(v: Violations, raw: dict) -> tuple[int, int, str]:
    """The seed, the evaluation's student cap and the free-text description."""
    seed = int(raw.get("seed") or 0)
    if seed < 0:
        v.append(("seed", "must be >= 0"))
    max_eval = int(raw.get("max_eval_students") or 0) or DEFAULTS["max_eval_students"]
    if not 100 <= max_eval <= 1_000_000:
        v.append(("max_eval_students", f"must be in 100..1000000, got {max_eval}"))
    description = str(raw.get("description") or "")
    if len(description) > 200:
        v.append(("description", "must be at most 200 characters"))
    return seed, max_eval, description


def train_config(config: dict, bundles_dir: Path, runs_dir: Path):
    """The models.training.train.TrainConfig of a normalised job configuration."""
    from models.training.train import TrainConfig

    split = {"valid_fraction": config["valid_fraction"], "test_fraction": config["test_fraction"]}
    if config.get("train_until") is not None:
        split = {"train_until": config["train_until"], "valid_until": config["valid_until"]}
    elif config.get("split_random"):
        split["split"] = "random"
    return TrainConfig(data_dir=Path(config["data_source"]), bundles_dir=Path(bundles_dir), runs_dir=Path(runs_dir),
                       seed=config["seed"], cv_folds=config["cv_folds"], search_budget=config["search_budget"],
                       collab_trials=config.get("collab_trials"),
                       max_eval_students=config["max_eval_students"], activate=False, progress=False,
                       components=tuple(config["components"]),
                       success_algorithms=tuple(config["success_algorithms"]) or None, **split)
