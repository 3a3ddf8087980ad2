"""The trainer's training configuration: every wrong field named, the defaults filled in, the
normalised form and its TrainingConfig message the same job both ways, and StartTraining
refusing a bad configuration without queueing anything."""

from __future__ import annotations

import pytest

from models.lifecycle.config import normalise_config
from tests.support.trainer import AUTH, T, violations_of


@pytest.mark.parametrize("raw,fields", [
    ({"components": ["content", "bogus", "content"]}, {"components[1]", "components[2]"}),
    ({"cv_folds": 2}, {"cv_folds"}),
    ({"cv_folds": 11}, {"cv_folds"}),
    ({"success": {"algorithms": ["svm", "random_forest", "random_forest"], "search_budget": 51}},
     {"success.algorithms[0]", "success.algorithms[2]", "success.search_budget"}),
    ({"split": {"valid_fraction": 0.5, "test_fraction": 0.3}}, {"split.valid_fraction", "split"}),
    ({"split": {"valid_fraction": 0.01}}, {"split.valid_fraction"}),
    ({"split": {"train_until": 2000}}, {"split.valid_until"}),
    ({"split": {"train_until": 2000, "valid_until": 1000}}, {"split.valid_until"}),
    ({"split": {"train_until": 1000, "valid_until": 2000, "test_fraction": 0.2}}, {"split"}),
    ({"split": {"train_until": 1000, "valid_until": 2000, "random": True}}, {"split.random"}),
    ({"auto_activation": {"enabled": True, "margin": 1.5}}, {"auto_activation.margin"}),
    ({"auto_activation": {"enabled": True, "margin": float("nan")}}, {"auto_activation.margin"}),
    ({"max_eval_students": 5, "description": "x" * 201}, {"max_eval_students", "description"}),
    ({"collaborative": {"trials": 201}}, {"collaborative.trials"}),
    ({"data_source": "/"}, {"data_source"}),                      # outside the data roots
    ({"data_source": "{root}/nope"}, {"data_source"}),            # does not exist
    ({"data_source": "{root}/bundles"}, {"data_source"}),         # no students table
])
def test_config_violations_name_the_fields(tiny_system, raw, fields):
    if "data_source" in raw:
        raw = {"data_source": raw["data_source"].format(root=tiny_system.root)}
    _, violations = normalise_config(raw, tiny_system.data, [tiny_system.root])
    assert {f for f, _ in violations} == fields
    assert all(d for _, d in violations)


def test_config_defaults_and_normalisation(tiny_system):
    config_, violations = normalise_config({"components": ["ranker", "content"]}, tiny_system.data, [tiny_system.root])
    assert violations == []
    assert config_["components"] == ["content", "ranker"]  # canonical order
    assert config_["data_source"] == str(tiny_system.data.resolve())
    assert (config_["cv_folds"], config_["search_budget"], config_["valid_fraction"], config_["test_fraction"]) == \
        (3, 4, 0.15, 0.15)
    assert config_["auto_activate"] is False and config_["success_algorithms"] == []
    cut, violations = normalise_config({"split": {"train_until": 10, "valid_until": 20}}, tiny_system.data,
                                       [tiny_system.root])
    assert violations == [] and (cut["train_until"], cut["valid_until"]) == (10, 20)
    # a random split: the fractions, held out per student; the job's TrainConfig says so
    from models.lifecycle.config import train_config

    shuffled, violations = normalise_config({"split": {"random": True}}, tiny_system.data, [tiny_system.root])
    assert violations == [] and shuffled["split_random"] is True
    assert train_config(shuffled, tiny_system.root / "b", tiny_system.root / "r").split == "random"
    assert train_config(config_, tiny_system.root / "b", tiny_system.root / "r").split == "time"
    # the collaborative search: scaled to the data unless a number of trials is given
    assert train_config(config_, tiny_system.root / "b", tiny_system.root / "r").collab_trials is None
    fixed, violations = normalise_config({"collaborative": {"trials": 12}}, tiny_system.data, [tiny_system.root])
    assert violations == [] and train_config(fixed, tiny_system.root / "b", tiny_system.root / "r").collab_trials == 12


def test_config_round_trips_through_its_message(tiny_system):
    """A job's configuration as StartTraining takes it and as GetJob shows it: the same job."""
    from services.trainer.messages import config_dict, config_message

    raw = {"collaborative": {"trials": 7}, "split": {"random": True}, "cv_folds": 4, "seed": 3}
    config_, violations = normalise_config(raw, tiny_system.data, [tiny_system.root])
    assert violations == []
    again, violations = normalise_config(config_dict(config_message(config_)), tiny_system.data, [tiny_system.root])
    assert violations == [] and again == config_ and again["collab_trials"] == 7


def test_start_training_rejects_bad_configs_with_field_violations(trainer):
    stub = trainer.stub
    bad = T.TrainingConfig(components=["content", "everything"], cv_folds=12,
                           success=T.SuccessSearch(algorithms=["xgboost"]),
                           split=T.TimeSplit(valid_fraction=0.5),
                           auto_activation=T.AutoActivation(enabled=True, margin=-0.1), data_source="/etc")
    jobs_before = sum(trainer.store.counts().values())
    fields = violations_of(lambda: stub.StartTraining(T.StartTrainingRequest(config=bad), metadata=AUTH, timeout=10))
    assert fields == {"config.components[1]", "config.cv_folds", "config.success.algorithms[0]",
                      "config.split.valid_fraction", "config.split", "config.auto_activation.margin",
                      "config.data_source"}
    assert sum(trainer.store.counts().values()) == jobs_before  # nothing was queued
