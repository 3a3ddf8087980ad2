"""Tests of the library: bundles and registry, components, fairness, training, data."""
