"""The offline pipeline: train, evaluate, select, report."""
