"""The model lifecycle: training jobs and retraining triggers."""
