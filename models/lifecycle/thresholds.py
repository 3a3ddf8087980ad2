"""The retraining triggers' default thresholds (models/lifecycle/triggers.py), in a module of their
own so that the command line can offer them without importing the triggers' dependencies."""

DEFAULT_MIN_NEW_INTERACTIONS = 1000
DEFAULT_MIN_NEW_OUTCOMES = 200
DEFAULT_MAX_AGE_HOURS = 24.0 * 7
